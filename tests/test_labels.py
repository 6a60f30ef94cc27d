"""Own labels tables, acting on an audit (clean, exclude, audit_every), recipe-relative
paths and the oversubscription warning."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import coreset_curate as cc
from coreset_curate.common.checks import UnknownIds
from coreset_curate.common.cores import busy_elsewhere, oversubscription
from coreset_curate.data import FingerprintMismatch, load_data, to_hf_dataset
from coreset_curate.common.index import epoch_rows, read_index
from coreset_curate.labels.cleaning import (Labels, apply_labels, clean_labels, exclusions,
                                   read_labels_table, restrict_rounds)
from coreset_curate.labels.noise import inject_noise
from coreset_curate.labels.audit import audit
from coreset_curate.selection import load_rounds, select
from coreset_curate.training import TrainConfig, load_recipe, run_training

from test_audit import planted, score_table


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "train")


def _noisy_table(data, tmp_path, rate=0.2):
    noise = inject_noise(data.labels.numpy(), rate, seed=0, num_classes=data.num_classes)
    return noise, noise.write(tmp_path / "noisy.parquet", data.sample_ids,
                              fingerprint=data.fingerprint)


# ------------------------------------------------------------------ labels tables
def test_labels_table_replaces_labels_and_the_fingerprint_follows(digits, tmp_path):
    noise, path = _noisy_table(digits, tmp_path)
    noisy = load_data("digits", "train", labels=path)
    assert np.array_equal(noisy.labels.numpy(), noise.labels)
    assert np.array_equal(noisy.sample_ids, digits.sample_ids)
    assert noisy.fingerprint["labels_sha256"] != digits.fingerprint["labels_sha256"]
    assert noisy.fingerprint == digits.with_labels(noise.labels).fingerprint
    table = read_labels_table(path)
    assert np.array_equal(table.true_labels, digits.labels.numpy())


def test_labels_table_of_other_ids_or_classes_is_refused(digits, tmp_path):
    _, path = _noisy_table(digits, tmp_path)
    test = load_data("digits", "test")
    with pytest.raises(UnknownIds, match="not in the dataset"):
        apply_labels(test, path)  # train ids 0..1436 against 360 test rows
    too_high = Labels(digits.sample_ids, np.full(len(digits), 10))
    with pytest.raises(ValueError, match="10 classes"):
        apply_labels(digits, too_high)
    with pytest.raises(ValueError, match="duplicate sample_id"):
        Labels(np.array([1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="lacks"):
        read_labels_table(pa.table({"sample_id": [0], "y": [1]}))


def test_a_table_that_leaves_samples_out_must_say_so(digits):
    ids, labels = digits.sample_ids[5:], digits.labels.numpy()[5:]
    with pytest.raises(ValueError, match="labels 1432 of the dataset's 1437"):
        apply_labels(digits, Labels(ids, labels))
    kept = apply_labels(digits, Labels(ids, labels, metadata={"dropped": 5}))
    assert len(kept) == 1432 and np.array_equal(kept.sample_ids, ids)
    assert len(apply_labels(digits, Labels(ids, labels), missing="drop")) == 1432
    # a table recording 5 dropped samples, made from a dataset of other ids
    other = Labels(ids, labels, metadata={"dropped": 5, "source_fingerprint": {
        "length": 999, "ids_sha256": "0" * 64}})
    with pytest.raises(FingerprintMismatch, match="another dataset"):
        apply_labels(digits, other)


# ------------------------------------------------------------------ acting on an audit
@pytest.fixture(scope="module")
def planted_audit():
    tables, true, given = planted()
    return audit(tables, true_labels=true), true, given


def test_clean_leaves_out_exactly_the_flagged_mislabeled(planted_audit):
    result, true, given = planted_audit
    t = result.table
    flag = t.column("flag").to_numpy(zero_copy_only=False)
    kind = np.asarray(t.column("kind").to_pylist(), dtype=object)
    out = clean_labels(result)
    gone = np.setdiff1d(np.arange(len(given)), out.sample_ids)
    assert np.array_equal(gone, np.flatnonzero(flag & (kind == "mislabeled")))
    assert out.dropped == len(gone) and np.array_equal(out.true_labels, true[out.sample_ids])
    # the planted noise is mostly gone: 20% wrong before, far fewer after
    before = float((given != true).mean())
    after = float((out.labels != out.true_labels).mean())
    assert before == pytest.approx(0.2, abs=0.01) and after < before / 3


def test_clean_keeps_quantization_fragile_samples():
    k, n = 4, 400
    rng = np.random.default_rng(1)
    true = np.arange(n) % k
    given = true.copy()
    given[:40] = (true[:40] + 1) % k     # wrong labels: the reference sees the true class
    student = true.copy()
    student[40:80] = (true[40:80] + 2) % k  # right labels the quantized student gets wrong
    logits = rng.normal(0, 0.3, (n, k)) + 6 * np.eye(k)[student]
    ref = rng.normal(0, 0.3, (n, k)) + 6 * np.eye(k)[true]
    result = audit([score_table(logits, given, 0, ref)])
    assert result.kind_counts()["fragile"] == 40
    out = clean_labels(result)
    assert np.array_equal(out.sample_ids, np.arange(40, n))  # fragile 40..79 kept
    assert np.array_equal(exclusions(result), np.arange(40))
    assert len(clean_labels(result, kinds=("mislabeled", "fragile"))) == n - 80


def test_clean_relabel_uses_the_suggested_label(planted_audit):
    result, true, given = planted_audit
    t = result.table
    out = clean_labels(result, relabel=True)
    flag = t.column("flag").to_numpy(zero_copy_only=False)
    kind = np.asarray(t.column("kind").to_pylist(), dtype=object)
    sug = t.column("suggested_label").to_pylist()
    fixed = [i for i in np.flatnonzero(flag & (kind == "mislabeled")) if sug[i] is not None]
    assert len(fixed) > 100 and out.metadata["relabeled"] == len(fixed)
    pos = np.searchsorted(out.sample_ids, fixed)
    assert np.array_equal(out.labels[pos], [sug[i] for i in fixed])
    assert (out.labels[pos] == true[fixed]).mean() > 0.9  # the reference saw the true class
    untouched = np.setdiff1d(out.sample_ids, fixed)
    assert np.array_equal(out.labels[np.searchsorted(out.sample_ids, untouched)],
                          given[untouched])


def test_clean_chains_onto_the_labels_the_audit_saw(planted_audit, tmp_path):
    result, true, given = planted_audit
    prior = Labels(np.arange(len(given)), given, true, {"dropped": 0})
    out = clean_labels(result, labels=prior)
    assert out.true_labels is not None
    wrong = Labels(np.arange(len(given)), (given + 1) % 5)
    with pytest.raises(ValueError, match="other labels than the audit saw"):
        clean_labels(result, labels=wrong)


def test_exclusions_from_an_audit_a_table_or_ids(planted_audit, tmp_path):
    result, _, _ = planted_audit
    result.write(tmp_path / "a")
    ids = exclusions(tmp_path / "a")
    assert np.array_equal(ids, exclusions(result))
    assert np.array_equal(ids, exclusions(tmp_path / "a" / "audit.parquet"))
    t = result.table
    kind = np.asarray(t.column("kind").to_pylist(), dtype=object)
    assert np.array_equal(ids, np.flatnonzero(t.column("flag").to_numpy(zero_copy_only=False)
                                              & (kind == "mislabeled")))
    assert len(exclusions(result, kinds=("fragile",))) == int((kind == "fragile").sum())
    assert np.array_equal(exclusions(pa.table({"sample_id": [7, 3, 7]})), [3, 7])
    with pytest.raises(ValueError, match="unknown flag kind"):
        exclusions(result, kinds=("typo",))


def test_select_never_picks_excluded_ids_and_keeps_the_budget():
    rng = np.random.default_rng(0)
    n = 1000
    t = pa.table({"sample_id": np.arange(n), "label": np.arange(n) % 10,
                  "epoch": np.zeros(n, np.int32), "evs": rng.random(n).astype(np.float32),
                  "loss": rng.random(n).astype(np.float32)})
    full = select([t], "el2n", 0.1)
    out = exclude = full.sample_ids[::2]
    out = select([t], "el2n", 0.1, exclude=exclude)
    assert len(out) == len(full) == 100
    assert not np.isin(exclude, out.sample_ids).any()
    # the kept half of the top stays; the rest are the next highest of each class
    assert np.isin(full.sample_ids[1::2], out.sample_ids).all()
    evs = t.column("evs").to_numpy()
    for c in range(10):
        rows = np.setdiff1d(np.flatnonzero(np.arange(n) % 10 == c), exclude)
        best = rows[np.argsort(-evs[rows], kind="stable")[:10]]
        assert np.array_equal(np.sort(best), np.sort(out.sample_ids[out.sample_ids % 10 == c]))
    for method in ("random_epoch", "random", "ccs"):
        chosen = select([t], method, 0.1, exclude=np.arange(0, n, 3))
        assert len(chosen) == 100 and not np.isin(chosen.sample_ids, np.arange(0, n, 3)).any()
    with pytest.raises(UnknownIds, match="lack"):
        select([t], "el2n", 0.1, exclude=[5000])


def test_restrict_rounds_drops_what_the_table_leaves_out(planted_audit):
    tables, true, given = planted()
    sr = load_rounds(tables, ("evs",))
    keep = np.arange(0, len(given), 2)
    out = restrict_rounds(sr, Labels(keep, given[keep], metadata={"dropped": len(given) - len(keep)}))
    assert all(np.array_equal(r["sample_id"], keep) for r in out.rounds)
    with pytest.raises(ValueError, match="score the data with these labels first"):
        restrict_rounds(sr, Labels(np.arange(len(given)), true))


# ------------------------------------------------------------------ in a training loop
N, K, D = 400, 4, 6


def _noisy_problem():
    g = torch.Generator().manual_seed(0)
    true = torch.arange(N) % K
    x = torch.randn(N, D, generator=g) * 0.3 + 3.0 * nn.functional.one_hot(true, D).float()
    given = torch.as_tensor(inject_noise(true.numpy(), 0.2, seed=0, num_classes=K).labels)
    model = nn.Linear(D, K)  # knows the true class: logits are the first K features
    with torch.no_grad():
        model.weight.copy_(torch.eye(K, D))
        model.bias.zero_()
    return x, true, given, model


def test_selector_audits_as_it_goes_and_keeps_flags_out(tmp_path):
    x, true, given, model = _noisy_problem()
    wrong = (given != true).numpy()
    sel = cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4, reselect_every=2,
                              reference=model, out=tmp_path / "run", audit_every=1)
    plain = cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4,
                                reselect_every=2, reference=model)
    for epoch in range(4):
        ids, _ = sel.subset(epoch, model)
        base, _ = plain.subset(epoch, model)
        assert len(ids) == len(base) == 80
        assert wrong[base].mean() > 0.9  # EVS alone spends its budget on the wrong labels
        assert wrong[ids].mean() < 0.1
    audits = sorted(p.name for p in (tmp_path / "run" / "audits").iterdir())
    assert audits == ["epoch_0000.parquet", "epoch_0002.parquet"]
    flagged = exclusions(tmp_path / "run" / "audits" / "epoch_0002.parquet")
    assert wrong[flagged].mean() > 0.9 and wrong[flagged].sum() > 0.8 * wrong.sum()
    assert not np.isin(epoch_rows(read_index(tmp_path / "run" / "index.parquet"), 3)[0],
                       flagged).any()
    # in memory, resumed from its state: the audit's flags come back with it
    state = plain.state_dict()
    mem = cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4, reselect_every=2,
                              reference=model, audit_every=2)
    mem.subset(0, model)
    again = cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4,
                                reselect_every=2, reference=model, audit_every=2)
    again.load_state_dict(mem.state_dict())
    ids, _ = again.subset(2, model)  # no audit due at epoch 2 (every 2nd round)
    assert not np.isin(ids, mem.audits.flags[0]).any() and len(mem.audits.flags[0]) > 50
    assert state["settings"] != mem.state_dict()["settings"]
    # a selector over the folder with other exclusion settings is refused
    with pytest.raises(ValueError, match="other settings"):
        cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4, reselect_every=2,
                            reference=model, out=tmp_path / "run")
    with pytest.raises(UnknownIds, match="lacks"):
        cc.AdaptiveSelector(TensorDataset(x, given), "el2n", 0.2, epochs=4, exclude=[N + 5])


BASE = dict(data="digits", model="small_cnn", batch_size=64, lr=0.05, weight_decay=1e-4,
            channels_last=False, eval_batch_size=512, score_batch_size=512)


def test_trainer_reads_a_cleaned_labels_table(digits, tmp_path):
    noise, path = _noisy_table(digits, tmp_path)
    keep = np.flatnonzero(~noise.flipped)[::2]  # some clean rows only, "dropped" recorded
    table = Labels(digits.sample_ids[keep], noise.labels[keep], noise.true_labels[keep],
                   {"dropped": len(digits) - len(keep), "source_fingerprint": digits.fingerprint})
    table.write(tmp_path / "clean.parquet")
    summary = run_training(TrainConfig(**BASE, mode="fp", epochs=1,
                                       labels=str(tmp_path / "clean.parquet")), tmp_path / "run")
    assert summary["train_samples"] == len(keep)
    written = read_labels_table(tmp_path / "run" / "labels.parquet")
    assert np.array_equal(written.sample_ids, digits.sample_ids[keep])
    assert np.array_equal(written.true_labels, noise.true_labels[keep])
    with pytest.raises(ValueError, match="use one"):
        TrainConfig(**BASE, labels="x.parquet", label_noise={"rate": 0.2})
    with pytest.raises(ValueError, match="method full"):
        TrainConfig(**BASE, exclude="audit/")
    with pytest.raises(ValueError, match="use one or the other"):
        TrainConfig(**BASE, method="rho", audit_every=1, free_scores=True)


def test_recipe_paths_resolve_against_the_recipe(tmp_path, monkeypatch, digits):
    (tmp_path / "recipes" / "base").mkdir(parents=True)
    (tmp_path / "recipes" / "base" / "b.yaml").write_text(
        "data: digits\nmodel: small_cnn\nlabels: ../../tables/l.parquet\n")
    (tmp_path / "recipes" / "r.yaml").write_text(
        "base: base/b.yaml\nteacher: ../teachers/t.pt\ndata: imagefolder:../photos\n"
        "method: random_epoch\nfraction: 0.1\n")
    monkeypatch.chdir(tmp_path / "recipes" / "base")  # anywhere but the recipe's folder
    cfg = load_recipe(tmp_path / "recipes" / "r.yaml", ["exclude=rel/audit"])
    assert cfg.teacher == str(tmp_path / "teachers" / "t.pt")
    assert cfg.labels == str(tmp_path / "tables" / "l.parquet")  # the base's own folder
    assert cfg.data == f"imagefolder:{tmp_path / 'photos'}"
    assert cfg.exclude == "rel/audit"  # overrides: the working directory's
    assert load_recipe(None, ["data=digits"]).data == "digits"
    (tmp_path / "recipes" / "d.yaml").write_text("data: coco:../cifar10-det\n")
    assert load_recipe(tmp_path / "recipes" / "d.yaml").data == \
        f"coco:{tmp_path / 'cifar10-det'}"


def test_a_run_resumes_when_its_path_is_named_relative_to_the_recipe(digits, tmp_path,
                                                                      monkeypatch):
    _, path = _noisy_table(digits, tmp_path)
    monkeypatch.chdir(tmp_path)
    base = ["data=digits", "model=small_cnn", "mode=fp", "epochs=2", "batch_size=128",
            "channels_last=false", "eval_batch_size=512"]
    assert run_training(load_recipe(None, [*base, "labels=noisy.parquet"]), tmp_path / "run",
                        stop_after=1) is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.yaml").write_text("labels: ../noisy.parquet\n")
    summary = run_training(load_recipe(tmp_path / "sub" / "r.yaml", base), tmp_path / "run",
                           resume=True)
    assert summary["epochs"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    (tmp_path / "other.parquet").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="labels"):
        run_training(load_recipe(None, [*base, "labels=other.parquet"]), tmp_path / "run",
                     resume=True)


# ------------------------------------------------------------------ export with labels
def test_hf_subset_comes_with_the_labels_trained_on(digits, tmp_path):
    noise, _ = _noisy_table(digits, tmp_path)
    keep = np.arange(0, len(digits), 3)
    table = Labels(digits.sample_ids[keep], noise.labels[keep], metadata={
        "dropped": len(digits) - len(keep)})
    data = apply_labels(digits, table)
    sel = cc.AdaptiveSelector(data, "random_epoch", 0.1, epochs=1, out=tmp_path / "run",
                              transform=cc.default_transforms(data)[1])
    ids, _ = sel.subset(0)
    ds = to_hf_dataset(digits)
    sub = cc.load_subset(ds, tmp_path / "run" / "index.parquet", 0, labels=table)
    assert np.array_equal(sub["label"], noise.labels[ids])
    assert sub.features["label"] == ds.features["label"]
    with pytest.raises(FingerprintMismatch):
        cc.load_subset(ds, tmp_path / "run" / "index.parquet", 0)


# ------------------------------------------------------------------ cores
def test_oversubscription_message():
    assert oversubscription(0, 2, 2) is None and oversubscription(1, 1, 2) is None
    assert oversubscription(None, 64, 2) is None  # nothing to go on
    msg = oversubscription(2, 2, 2)
    assert "oversubscribed" in msg and "num_threads=1" in msg
    assert "num_threads=2" in oversubscription(2, 4, 4)


def test_busy_elsewhere_reads_the_kernel_count(tmp_path):
    fake = tmp_path / "loadavg"
    fake.write_text("0.00 0.00 0.00 7/300 4242\n")
    others = busy_elsewhere(samples=1, path=str(fake))
    assert 0 <= others <= 6  # 7 running, at least the reading thread is this process's
    fake.write_text("garbage\n")
    assert busy_elsewhere(samples=1, path=str(fake)) is None


def test_core_watch_flags_sustained_sharing_only(monkeypatch, tmp_path):
    """CoreWatch: busy threads elsewhere in 3 readings in a row flag the cores as shared;
    the same count in readings with quiet ones between does not; a child process's busy
    thread is this run's own (on a made-up /proc: a live child's state is the kernel's)."""
    import time

    from coreset_curate.common import cores

    def fake(readings):
        it = iter(readings)
        return lambda samples=5, interval_s=0.02, path="": next(it, 0)

    def watched(readings):
        monkeypatch.setattr(cores, "busy_elsewhere", fake(readings))
        with cores.CoreWatch(threads=2, cores=2, interval_s=0.001, sustained=3) as w:
            time.sleep(0.2)
        return w

    assert not watched([5, 0, 5, 0, 5, 5, 0, 5]).shared
    w = watched([0, 5, 5, 5])
    assert w.shared and "oversubscribed" in w.message
    assert not watched([0] * 10).shared
    monkeypatch.undo()
    proc = tmp_path / "proc"
    for pid, tid, state, kids in (("self", "10", "R", "42"), ("self", "11", "S", ""),
                                  ("42", "42", "R", "43"), ("43", "43", "S", "")):
        task = proc / pid / "task" / tid
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{tid} (py thon) {state} 1 2 3\n")
        (task / "children").write_text(kids)
    assert cores._own_running(str(proc)) == 2  # thread 10 and the child's 42


def test_trainer_audits_every_round_and_keeps_flags_out(tmp_path):
    """audit_every in a QAT recipe: each round's audit is written, and no later subset
    holds a sample it flagged as mislabeled."""
    fp = run_training(TrainConfig(**BASE, mode="fp", epochs=6, warmup_epochs=1), tmp_path / "fp")
    assert fp["top1"] > 80
    cfg = TrainConfig(**{**BASE, "mode": "qat", "teacher": str(tmp_path / "fp" / "model.pt"),
                         "optimizer": "adam", "lr": 1e-3, "w_bits": 4, "a_bits": 4,
                         "epochs": 4, "reselect_every": 2, "method": "acs", "fraction": 0.2,
                         "label_noise": {"rate": 0.2}, "label_weight": 0.5, "audit_every": 1})
    run_training(cfg, tmp_path / "qat")
    audits = sorted((tmp_path / "qat" / "audits").glob("epoch_*.parquet"))
    assert [p.name for p in audits] == ["epoch_0000.parquet", "epoch_0002.parquet"]
    index = read_index(tmp_path / "qat" / "index.parquet")
    labels = read_labels_table(tmp_path / "qat" / "labels.parquet")
    wrong = labels.sample_ids[labels.labels != labels.true_labels]
    for epoch, audit_file in ((0, audits[0]), (2, audits[1])):
        flagged = exclusions(audit_file)
        assert len(flagged) > 50 and np.isin(flagged, wrong).mean() > 0.5
        for e in (epoch, epoch + 1):
            ids, _ = epoch_rows(index, e)
            assert not np.isin(ids, flagged).any()
            assert len(ids) == round(0.2 * 1437) or abs(len(ids) - 0.2 * 1437) <= 10
