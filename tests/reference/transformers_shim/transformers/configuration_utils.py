"""PretrainedConfig: a plain attribute bag with the generic HF defaults."""
import copy

# Policy switch for the golden generator.  The CEPE reference hard-codes
# `encoder_config._flash_attn_2_enabled = True` in LlamaForCausalContextLM
# (flash-attn is a CUDA-only dependency and is not installed here).  While this
# flag is True, `_flash_attn_2_enabled` reads False on every config, whatever was
# assigned, so LlamaDecoderLayer builds the eager LlamaAttention /
# LlamaCrossAttention classes for the decoder AND the encoder.  The requested
# value is kept in `_flash_attn_2_requested` for inspection.
FORCE_EAGER_ATTENTION = True


class PretrainedConfig:
    model_type = ""

    def __init__(self, **kwargs):
        self.return_dict = kwargs.pop("return_dict", True)
        self.output_hidden_states = kwargs.pop("output_hidden_states", False)
        self.output_attentions = kwargs.pop("output_attentions", False)
        self.torchscript = kwargs.pop("torchscript", False)
        self.torch_dtype = kwargs.pop("torch_dtype", None)
        self.use_bfloat16 = kwargs.pop("use_bfloat16", False)
        self.tie_word_embeddings = kwargs.pop("tie_word_embeddings", True)
        self.is_encoder_decoder = kwargs.pop("is_encoder_decoder", False)
        self.is_decoder = kwargs.pop("is_decoder", False)
        self.add_cross_attention = kwargs.pop("add_cross_attention", False)
        self.architectures = kwargs.pop("architectures", None)
        self.problem_type = kwargs.pop("problem_type", None)
        self.num_labels = kwargs.pop("num_labels", 2)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        self.name_or_path = kwargs.pop("name_or_path", kwargs.pop("_name_or_path", ""))
        # everything else (CEPE's custom keys, encoder_config, ...) becomes an attribute
        for k, v in kwargs.items():
            setattr(self, k, v)

    @property
    def use_return_dict(self):
        return self.return_dict and not self.torchscript

    @property
    def _flash_attn_2_enabled(self):
        if FORCE_EAGER_ATTENTION:
            return False
        return self.__dict__.get("_flash_attn_2_requested", False)

    @_flash_attn_2_enabled.setter
    def _flash_attn_2_enabled(self, value):
        self.__dict__["_flash_attn_2_requested"] = bool(value)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        d = copy.deepcopy(dict(config_dict))
        d.update(kwargs)
        return cls(**d)

    def to_dict(self):
        return copy.deepcopy(self.__dict__)
