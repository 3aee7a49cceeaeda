"""PreTrainedModel: nn.Module + config + post_init (weight init and tying)."""
from torch import nn


class PreTrainedModel(nn.Module):
    config_class = None
    base_model_prefix = ""
    main_input_name = "input_ids"
    _tied_weights_keys = None

    def __init__(self, config, *inputs, **kwargs):
        super().__init__()
        self.config = config
        self.name_or_path = getattr(config, "name_or_path", "")

    # --- init -----------------------------------------------------------
    def _init_weights(self, module):
        pass

    def post_init(self):
        """Run the subclass's `_init_weights` on every submodule, then tie."""
        self.apply(self._init_weights)
        self.tie_weights()

    def get_input_embeddings(self):
        return None

    def get_output_embeddings(self):
        return None

    def tie_weights(self):
        if getattr(self.config, "tie_word_embeddings", True):
            out = self.get_output_embeddings()
            inp = self.get_input_embeddings()
            if out is not None and inp is not None:
                out.weight = inp.weight

    # --- misc used around generation ------------------------------------
    def _extract_past_from_model_output(self, outputs, standardize_cache_format=False):
        return getattr(outputs, "past_key_values", None)

    @property
    def device(self):
        return next(self.parameters()).device

    @property
    def dtype(self):
        return next(self.parameters()).dtype
