"""File names and schema versions of the artefacts blockem_trl writes."""

LATENT_SET_FILENAME = "latent_set.json"
LATENT_SET_SCHEMA_VERSION = 1
LATENT_SET_FORMAT = "blockem_trl.latent_set"

BLOCKING_CONFIG_FILENAME = "blockem_config.json"

# sae-lens folder layout (`SAE.save_model` / `SAE.load_from_disk`).
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"

LAYER_CONVENTION = (
    "layer_index is the 0-based index of the decoder block whose output is hooked; the hook point is that "
    "block's module path, and its output equals hidden_states[layer_index + 1]"
)
