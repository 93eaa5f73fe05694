"""`latentmem analyze` on a tiny model with a fresh weaver: traces agree with `generate`'s own record;
an ablation that changes nothing reproduces the plain generation exactly, and removing every latent gives
the plain reasoner's output; a cluster ablation touches exactly that cluster's latents, and the
generation only from that cluster's first insertion on; the whole-memory ablations do what they say;
the attention replay is the sequence generation fed; clustering; the error taxonomy; the CLI end to end
(every report file written and non-empty, the same traces from the same config)."""

import json

import pytest
import torch

from conftest import steer
from latentmem.analyze import (
    Ablation,
    AnalysisError,
    ClusterAblation,
    ClusterConfig,
    Clustering,
    RandomSameNorm,
    RemoveAll,
    ShuffleExamples,
    capture,
    classify,
    cluster_latents,
    run_ablation,
)
from latentmem.analyze.attention import latent_attention, replay
from latentmem.analyze.capture import encode_prompts
from latentmem.cli import main
from latentmem.eval.task import get_task
from latentmem.memgen import GenerationConfig, LatentMemoryModel, MemGenConfig, TriggerConfig
from latentmem.models import load_model

MEMGEN = {"prompt_latents": 2, "inference_latents": 2, "max_inference_insertions": 3, "lora_r": 4}
NEW_TOKENS = 12
BATCH = 6  # the same batches everywhere, so that equal inputs give bitwise equal latents


@pytest.fixture(scope="module")
def setup():
    """A steered tiny-qwen2 (it hits delimiters) with a fresh weaver that inserts at every other
    delimiter, six arithmetic prompts, and their plain trace."""
    model, tok = load_model("tiny-qwen2", seed=0)
    steer(model, tok)
    cfg = MemGenConfig(**MEMGEN, trigger=TriggerConfig(policy="every_n", every_n=2))
    mm = LatentMemoryModel(model, tok, cfg).eval()
    task = get_task("arithmetic", n_train=10, n_test=10)
    examples = task.split("test", 6)
    plain = capture(mm, task, examples, batch_size=BATCH, max_new_tokens=NEW_TOKENS)
    return mm, task, examples, plain


class Unchanged(Ablation):
    """Returns every latent as it is and every slot kept: exercises the replace-and-keep path."""

    def apply(self, step, latents, rows, examples, blocks):
        return latents.clone(), torch.ones_like(latents[..., 0], dtype=torch.bool)


def test_trace_matches_generate(setup):
    mm, task, examples, plain = setup
    enc = encode_prompts(mm, task, [ex.prompt for ex in examples[:BATCH]])
    res = mm.generate(enc["input_ids"], enc["attention_mask"], GenerationConfig(max_new_tokens=NEW_TOKENS))
    T = enc["input_ids"].shape[1]
    assert any(e.insertion_steps for e in plain.examples)
    assert any(not c.inserted for e in plain.examples for c in e.candidates)  # every_n skips some
    for b, e in enumerate(plain.examples[:BATCH]):
        assert e.token_ids == res.sequences[b, : int(res.lengths[b])].tolist()
        assert e.insertion_steps == res.insertions[b]
        assert [blk.step for blk in e.blocks] == [-1, *res.insertions[b]]
        assert [blk.woven.shape for blk in e.blocks] == [(2, 64)] * len(e.blocks)
        cands = [
            (c - T, bool(d))
            for c, d in zip(res.plan.candidates[b].tolist(), res.plan.decisions[b].tolist(), strict=True)
            if c >= 0
        ]
        assert [(c.step, c.inserted) for c in e.candidates] == cands
        assert [c.probability for c in e.candidates] == res.trigger_probs[b, : len(cands)].tolist()
        assert all(mm.is_delimiter[e.token_ids[c.step]] for c in e.candidates)
        assert e.score == task.score(examples[b], e.completion)
    latents, refs = plain.latents()
    assert latents.shape == (len(refs), 64) and len(refs) == sum(2 * len(e.blocks) for e in plain.examples)


def test_ablating_nothing_is_exact_and_removing_everything_is_the_plain_reasoner(setup):
    mm, task, examples, plain = setup
    _, same = run_ablation(
        mm, task, examples, plain, Unchanged(), batch_size=BATCH, max_new_tokens=NEW_TOKENS
    )
    for a, p in zip(same.examples, plain.examples, strict=True):
        assert a.token_ids == p.token_ids and a.insertion_steps == p.insertion_steps
        assert all(torch.equal(x.woven, y.woven) for x, y in zip(a.blocks, p.blocks, strict=True))

    result, gone = run_ablation(
        mm, task, examples, plain, RemoveAll(), batch_size=BATCH, max_new_tokens=NEW_TOKENS
    )
    enc = encode_prompts(mm, task, [ex.prompt for ex in examples])
    with mm.reasoner_mode() as reasoner:
        ref = reasoner.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)[
            :, enc["input_ids"].shape[1] :
        ]
    for b, e in enumerate(gone.examples):
        assert e.token_ids == ref[b, : e.n_tokens].tolist()
        assert not any(blk.kept.any() for blk in e.blocks)
    assert result.slots == sum(2 * len(e.blocks) for e in gone.examples)
    assert result.changed == sum(
        a.completion != p.completion for a, p in zip(gone.examples, plain.examples, strict=True)
    )


def _check_cluster_ablation(setup, clustering, c, mode, mean) -> tuple[int, int]:
    """Run the ablation of cluster `c`; check that it touched exactly the cluster's latents and changed the
    generation only from the cluster's first block on. Returns (examples the cluster never reached,
    examples it reached after some answer tokens)."""
    mm, task, examples, plain = setup
    result, ablated = run_ablation(
        mm, task, examples, plain, ClusterAblation(clustering, c, mode, mean), batch_size=BATCH,
        max_new_tokens=NEW_TOKENS,
    )  # fmt: skip
    assert result.slots == sum(
        int((clustering.assign(b.woven) == c).sum()) for e in ablated.examples for b in e.blocks
    )
    untouched = prefix = 0
    for a, p in zip(ablated.examples, plain.examples, strict=True):
        # what the reasoner read differs from what the weaver wrote exactly at the cluster's slots
        for blk in a.blocks:
            hit = clustering.assign(blk.woven) == c
            if mode == "remove":
                assert torch.equal(blk.kept, ~hit) and torch.equal(blk.inserted, blk.woven)
            else:
                fill = mean if mode == "mean" else torch.zeros_like(mean)
                assert blk.kept.all()
                assert torch.equal(blk.inserted, torch.where(hit[:, None], fill, blk.woven))
        # and the generation is the plain one up to the first block with a latent of the cluster
        first = next((j for j, blk in enumerate(p.blocks) if (clustering.assign(blk.woven) == c).any()), None)
        if first is None:
            assert a.token_ids == p.token_ids
            untouched += 1
            continue
        upto = p.blocks[first].step + 1  # tokens generated before the block went in
        prefix += upto > 0
        assert a.token_ids[:upto] == p.token_ids[:upto]
        for x, y in zip(a.blocks[: first + 1], p.blocks[: first + 1], strict=True):
            # the same latents up to float rounding: other rows' ablations change the batch's cache layout
            # (dropped slots, compaction), so the kernels may sum in another order
            assert x.step == y.step
            torch.testing.assert_close(x.woven, y.woven, atol=1e-5, rtol=1e-5)
    return untouched, prefix


def test_cluster_ablation_changes_only_that_clusters_latents(setup):
    latents, _ = setup[3].latents()
    clustering = cluster_latents(latents, ClusterConfig(k=3), seed=0)
    for c, mode in ((0, "remove"), (1, "mean"), (2, "zero")):
        _check_cluster_ablation(setup, clustering, c, mode, latents.mean(0))


def test_ablating_one_late_latent_changes_one_example_from_that_point(setup):
    """Every latent its own cluster: ablating one inference latent leaves the other examples exactly as
    they were, and its own example as it was up to that latent's insertion."""
    plain = setup[3]
    latents, refs = plain.latents()
    unit = latents / latents.norm(dim=-1, keepdim=True)
    own = Clustering(centroids=unit, labels=torch.arange(len(refs)), silhouettes={}, method="one per latent")
    late = max(range(len(refs)), key=lambda i: plain.examples[refs[i].example].blocks[refs[i].block].step)
    assert plain.examples[refs[late].example].blocks[refs[late].block].step > 0
    for mode in ("remove", "mean"):
        untouched, prefix = _check_cluster_ablation(setup, own, late, mode, latents.mean(0))
        assert (untouched, prefix) == (len(plain.examples) - 1, 1)


def test_whole_memory_ablations(setup):
    mm, task, examples, plain = setup
    _, shuffled = run_ablation(
        mm, task, examples, plain, ShuffleExamples(plain, seed=0), batch_size=BATCH, max_new_tokens=NEW_TOKENS
    )
    prompt_blocks = [e.blocks[0].woven for e in plain.examples]
    for i, e in enumerate(shuffled.examples):
        donors = [j for j, w in enumerate(prompt_blocks) if torch.equal(w, e.blocks[0].inserted)]
        assert donors and i not in donors  # another example's prompt latents
    noise = RandomSameNorm(seed=1)
    _, rand = run_ablation(mm, task, examples, plain, noise, batch_size=BATCH, max_new_tokens=NEW_TOKENS)
    for e in rand.examples:
        for blk in e.blocks:
            assert torch.allclose(blk.inserted.norm(dim=-1), blk.woven.norm(dim=-1), rtol=1e-4)
            assert not torch.allclose(blk.inserted, blk.woven)


def test_clustering_chooses_k_and_assigns_by_nearest_centroid():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 5
    points = torch.cat([c + 0.1 * torch.randn(20, 8, generator=g) for c in centres])
    for method in ("kmeans", "agglomerative"):
        clustering = cluster_latents(points, ClusterConfig(method=method, k_max=6), seed=0)
        assert clustering.k == 3 and max(clustering.silhouettes, key=clustering.silhouettes.get) == 3
        assert torch.equal(clustering.assign(points), clustering.labels)
        assert len(set(clustering.labels[:20].tolist())) == 1
    with pytest.raises(AnalysisError, match="distinct latents"):
        cluster_latents(torch.ones(10, 8), ClusterConfig())


def test_error_taxonomy():
    task = get_task("arithmetic", n_train=10, n_test=10)
    ex = task.split("test", 1)[0]
    assert classify(task, ex, f"#### {ex.answer}", 1.0) == "correct"
    assert classify(task, ex, "  \n", 0.0) == "no_answer"
    assert classify(task, ex, "so so so so so so", 0.0) == "looping"
    assert classify(task, ex, f"the answer is {int(ex.answer) + 1}", 0.0) == "wrong_format"
    assert classify(task, ex, f"#### {int(ex.answer) + 1}", 0.0) == "wrong_value"


def test_cli_runs_end_to_end(tmp_path, capsys):
    model, tok = load_model("tiny-qwen2", seed=0)
    LatentMemoryModel(model, tok, MemGenConfig(**MEMGEN)).save_pretrained(tmp_path / "memgen")
    common = [
        "--model", "tiny-qwen2", "--memgen", str(tmp_path / "memgen"), "--task", "arithmetic",
        "--task-arg", "n_train=10", "--task-arg", "n_test=10", "--n", "4", "--max-new-tokens", "6",
    ]  # fmt: skip
    out = tmp_path / "clusters"
    assert (
        main(["analyze", "clusters", *common, "--k", "2", "--out", str(out), "ablation_modes=[remove]"]) == 0
    )
    assert str(out / "report.md") in capsys.readouterr().out
    files = ["config.yaml", "run.json", "traces.jsonl", "latents.safetensors", "clusters.json", "ablations.json",
             "summary.json", "report.md"]  # fmt: skip
    plots = [
        "insertion_positions",
        "trigger_probability",
        "invocation_vs_correctness",
        "latent_norms",
        "attention_to_latents",
        "clusters",
        "ablations",
    ]
    for name in files + [f"plots/{p}.png" for p in plots]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert all(f"plots/{p}.png" in report for p in plots)
    ablations = json.loads((out / "ablations.json").read_text())
    assert [a["name"] for a in ablations] == [
        "cluster 0: remove", "cluster 1: remove", "all removed", "shuffled between examples", "random, same norm"
    ]  # fmt: skip
    # a trace-only run of the same examples writes the same traces (greedy, seeded)
    assert main(["analyze", "trace", *common, "--out", str(tmp_path / "trace")]) == 0
    assert (tmp_path / "trace" / "traces.jsonl").read_text() == (out / "traces.jsonl").read_text()
    assert not (tmp_path / "trace" / "clusters.json").exists()
    assert (
        main(["analyze", "trace", "--task", "arithmetic", "--out", str(tmp_path / "x")]) == 2
    )  # no --memgen


def test_attention_replays_generation_and_measures_latent_mass(setup):
    mm, task, examples, plain = setup
    e = max(plain.examples, key=lambda e: len(e.insertion_steps))
    prompt_ids = encode_prompts(mm, task, [examples[e.index].prompt])["input_ids"][0]
    x, kinds, queries = replay(mm, prompt_ids, e)
    assert int((kinds > 0).sum()) == 2 * len(e.blocks) and int(queries.sum()) == e.n_tokens - 1
    with mm.reasoner_mode() as reasoner:
        logits = reasoner(inputs_embeds=x).logits[0]
    # the slot before each answer token (a token, or the last latent of a block) predicts it, greedily
    token_slots = (kinds == 0).nonzero().flatten()[len(prompt_ids) :]
    assert logits[token_slots - 1].argmax(-1).tolist() == e.token_ids
    att = latent_attention(mm, task, examples, plain)
    assert att.prompt.shape == (2,) and float(att.prompt.min()) > 0 and float(att.prompt.max()) < 1
    assert float(att.inference.sum()) > 0 and 0 < att.uniform < 1
    assert mm.reasoner.config._attn_implementation == "sdpa"  # restored


def test_a_dropped_slot_is_as_if_the_weaver_wrote_one_latent_fewer():
    model, tok = load_model("tiny-qwen2", seed=0)
    steer(model, tok)
    mm = LatentMemoryModel(model, tok, MemGenConfig(**{**MEMGEN, "trigger": TriggerConfig(policy="never")}))
    task = get_task("arithmetic", n_train=10, n_test=10)
    enc = encode_prompts(mm, task, [task.split("test", 1)[0].prompt])
    woven = []

    def drop_first(step, latents, rows):
        woven.append(latents)
        return latents, torch.tensor([[False, True]])

    res = mm.generate(**enc, config=GenerationConfig(max_new_tokens=NEW_TOKENS), latent_hook=drop_first)
    with mm.reasoner_mode() as reasoner:
        x = torch.cat([reasoner.get_input_embeddings()(enc["input_ids"]), woven[0][:, 1:]], 1)
        ref = reasoner.generate(inputs_embeds=x, max_new_tokens=NEW_TOKENS, do_sample=False)
    n = int(res.lengths[0])
    assert res.sequences[0, :n].tolist() == ref[0, :n].tolist()
