"""ACT2FN: name -> activation module instance (only what LLaMA configs use)."""
from torch import nn


class _ActTable(dict):
    def __getitem__(self, key):
        factory = dict.__getitem__(self, key)
        return factory()


ACT2FN = _ActTable(
    silu=nn.SiLU,
    swish=nn.SiLU,
    gelu=nn.GELU,
    relu=nn.ReLU,
    tanh=nn.Tanh,
)
