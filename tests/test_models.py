import numpy as np
import pytest
import torch

from fedlora.config import ModelConfig
from fedlora.models.base import BaseModelError, load_pipeline, resolve_base_model
from fedlora.models.lora import attach_lora, load_lora_state, lora_state, save_adapter


def unet_output(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    cond = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=cond).sample


def perturbed_state(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in lora_state(unet).items()}


def test_local_folder_loads_through_from_pretrained(tiny_base):
    pipe = load_pipeline(tiny_base, cached=False)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    images = pipe(["a handwritten digit one"], height=32, width=32, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_bad_base_model_names_are_explained(tmp_path):
    with pytest.raises(BaseModelError, match="without model_index.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(BaseModelError, match="neither 'embedded'"):
        resolve_base_model("no/such/thing")
    assert resolve_base_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"


def test_lora_state_roundtrip_is_exact(tiny_base):
    pipe = load_pipeline(tiny_base, cached=False)
    attach_lora(pipe.unet, ModelConfig())
    base_out = unet_output(pipe.unet)
    state = perturbed_state(pipe.unet)
    load_lora_state(pipe.unet, state)
    changed = unet_output(pipe.unet)
    assert not torch.allclose(base_out, changed)
    assert all(torch.equal(lora_state(pipe.unet)[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state(pipe.unet, {k: v for k, v in list(state.items())[1:]})


def test_bad_lora_targets_fail_clearly(tiny_base):
    pipe = load_pipeline(tiny_base, cached=False)
    with pytest.raises(ValueError, match="matched no UNet module|Target modules"):
        attach_lora(pipe.unet, ModelConfig(lora_targets=("no_such_layer",)))


@pytest.mark.parametrize("alpha", [4.0, 8.0])
def test_saved_adapter_reproduces_the_unet_in_diffusers(tiny_base, tmp_path, alpha):
    model = ModelConfig(lora_rank=4, lora_alpha=alpha)
    pipe = load_pipeline(tiny_base, cached=False)
    attach_lora(pipe.unet, model)
    state = perturbed_state(pipe.unet)
    load_lora_state(pipe.unet, state)
    expected = unet_output(pipe.unet)
    save_adapter(tmp_path / "adapter", state, model)
    fresh = load_pipeline(tiny_base, cached=False)
    fresh.load_lora_weights(str(tmp_path / "adapter"))
    np.testing.assert_allclose(unet_output(fresh.unet).numpy(), expected.numpy(), atol=1e-5)
