"""The classifier-head PRM against a PyTorch transcription on a tiny random Qwen2 backbone
saved in Qwen2.5-Math-PRM's layout."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlx.models.prm import from_hf_prm  # noqa: E402
from rlx.models.safetensors_file import write_safetensors  # noqa: E402

D = 64


def _save_prm(path, with_head=True, vocab=128, bias=None):
    """A random Qwen2 backbone + head in Qwen2.5-Math-PRM's layout; `bias` = (neg, pos) zeroes the
    head's last weight so that every position gets exactly those logits."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=vocab, hidden_size=D, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      initializer_range=0.2, tie_word_embeddings=False)
    backbone = transformers.Qwen2Model(config).eval()
    head = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.ReLU(), torch.nn.Linear(D, 2)).eval()
    if bias is not None:
        with torch.no_grad():
            head[2].weight.zero_()
            head[2].bias.copy_(torch.tensor(bias))
    tensors = {f"model.{k}": v.detach().numpy() for k, v in backbone.state_dict().items()}
    if with_head:
        tensors.update({f"score.{k}": v.detach().numpy() for k, v in head.state_dict().items()})
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / "model.safetensors",
                      [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()])
    hf = {**config.to_dict(), "architectures": ["Qwen2ForProcessRewardModel"]}
    (path / "config.json").write_text(json.dumps(hf, default=str))
    return backbone, head


def test_classifier_prm_matches_pytorch(tmp_path):
    backbone, head = _save_prm(tmp_path / "prm")
    prm = from_hf_prm(tmp_path / "prm")
    ids = np.random.default_rng(0).integers(0, 128, size=(2, 11))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        hidden = backbone(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        want = head(hidden).numpy()
    got = np.asarray(prm(ids, attention_mask_BxT=mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_missing_head_is_a_clear_error(tmp_path):
    _save_prm(tmp_path / "lm", with_head=False)
    with pytest.raises(KeyError, match="no classifier head"):
        from_hf_prm(tmp_path / "lm")
