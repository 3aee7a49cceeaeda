"""Docstring decorators (no-ops), logging, feature probes and ModelOutput."""
import logging as _pylogging
from collections import OrderedDict
import dataclasses


def add_start_docstrings(*docstr):
    def deco(obj):
        return obj
    return deco


def add_start_docstrings_to_model_forward(*docstr):
    def deco(fn):
        return fn
    return deco


def replace_return_docstrings(output_type=None, config_class=None):
    def deco(fn):
        return fn
    return deco


def is_flash_attn_available():
    # Goldens are produced on the eager attention path (float32, CPU).
    return False


class _Logging:
    """`transformers.utils.logging` subset: get_logger() with warning_once."""

    def get_logger(self, name=None):
        lg = _pylogging.getLogger(name or "transformers")
        if not hasattr(lg, "warning_once"):
            seen = set()

            def warning_once(msg, *args):
                if msg not in seen:
                    seen.add(msg)
                    lg.warning(msg, *args)

            lg.warning_once = warning_once
        return lg


logging = _Logging()


class ModelOutput(OrderedDict):
    """Dataclass-backed output record.  Attribute access for every field;
    integer/slice indexing over the fields that are not None (HF semantics);
    string indexing by field name."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                OrderedDict.__setitem__(self, f.name, v)

    def __setattr__(self, name, value):
        if name in self.keys() and value is not None:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key, value):
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def to_tuple(self):
        return tuple(self[k] for k in self.keys())

    def __getitem__(self, k):
        if isinstance(k, str):
            return dict(self.items())[k]
        return self.to_tuple()[k]
