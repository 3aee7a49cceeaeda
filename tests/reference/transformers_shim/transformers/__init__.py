"""Minimal stand-in for the parts of HF `transformers` (4.34.1) that CEPE's
modeling_llama_flash.py imports.  Written from scratch for cepe.cpp's golden
generator; it is NOT the transformers library.  Only what the reference file
touches at import/construct/forward time is provided."""
__version__ = "4.34.1+cepe-shim"

from .configuration_utils import PretrainedConfig  # noqa: F401
from .models.llama.configuration_llama import LlamaConfig  # noqa: F401
