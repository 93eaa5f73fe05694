import pytest
import torch

from latentmem.errors import ConfigError
from latentmem.sampling import SamplingConfig, process_logits, select_next


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 0.0, 4.9]])
    assert select_next(logits, SamplingConfig()).tolist() == [1, 0]


def test_top_k_and_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = process_logits(logits, SamplingConfig(do_sample=True, top_k=2))
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = process_logits(logits, SamplingConfig(do_sample=True, top_p=0.7))
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()  # 0.5 < 0.7 needs the second
    p_small = process_logits(logits, SamplingConfig(do_sample=True, top_p=0.01))
    assert torch.isfinite(p_small[0, 0]) and torch.isinf(p_small[0, 1:]).all()


def test_sampling_follows_temperature_and_generator():
    logits = torch.tensor([[1.0, 0.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    hot = select_next(logits, SamplingConfig(do_sample=True, temperature=100.0), g).float().mean()
    cold = select_next(logits, SamplingConfig(do_sample=True, temperature=0.05), g).float().mean()
    assert 0.4 < hot < 0.6 and cold < 0.01
    a = select_next(logits[:50], SamplingConfig(do_sample=True), torch.Generator().manual_seed(3))
    b = select_next(logits[:50], SamplingConfig(do_sample=True), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_config():
    with pytest.raises(ConfigError, match="top_p: must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="temperature: must be > 0"):
        SamplingConfig(temperature=0.0)
