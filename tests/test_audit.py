"""Noise injection, the audit (suspicion, flags, kind, metrics) and its report."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from coreset_curate.labels.audit import AUDIT_SCHEMA, audit, flag_metrics
from coreset_curate.labels.noise import inject_noise, read_labels
from coreset_curate.scoring.measures import DEFAULT_SCORES, SCORES, BatchOutputs, compute_scores

EYE = np.eye


def score_table(logits, labels, epoch, ref_logits=None, ids=None, probs=False):
    """A score table computed by the package's own score functions from given logits
    (``probs=True`` adds the softmax column as ``score_dataset(probs=True)`` writes it)."""
    out = BatchOutputs(torch.as_tensor(logits, dtype=torch.float32),
                       torch.as_tensor(labels, dtype=torch.int64),
                       ref_logits=None if ref_logits is None
                       else torch.as_tensor(ref_logits, dtype=torch.float32))
    names = [n for n in DEFAULT_SCORES if n != "grand_last"]  # grand_last needs features
    values = compute_scores(out, names)
    n = len(labels)
    cols = {"sample_id": pa.array(np.arange(n) if ids is None else ids, pa.int64()),
            "label": pa.array(labels, pa.int64()),
            "epoch": pa.array(np.full(n, epoch, np.int32))}
    for name in names:
        typ = SCORES[name].dtype
        v = values[name]
        cols[name] = (pa.nulls(n, typ) if v is None
                      else pa.array(v.numpy().astype(typ.to_pandas_dtype()), typ))
    if probs:
        soft = out.probs.numpy().astype(np.float32)
        cols["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(soft.reshape(-1)), soft.shape[1])
    return pa.table(cols)


def planted(n=3000, k=5, rate=0.2, seed=0, memorize=(0.0, 1.5, 3.0)):
    """Rounds of a student that sees the true class (weaker on 30% hard samples) and, round
    by round, fits more of the wrong labels; the reference sees the true class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    given = inject_noise(true, rate, seed=seed + 1, num_classes=k).labels
    hard = rng.random(n) < 0.3
    tables = []
    for r, mem in enumerate(memorize):
        strength = np.where(hard, 1.5, 4.0) + r
        logits = (rng.normal(0, 1, (n, k)) + strength[:, None] * EYE(k)[true]
                  + mem * EYE(k)[given])
        ref = rng.normal(0, 1, (n, k)) + 5 * EYE(k)[true]
        tables.append(score_table(logits, given, 4 * r, ref))
    return tables, true, given


# ------------------------------------------------------------------ noise injection
def test_symmetric_noise_flips_exactly_the_rate_to_other_classes():
    labels = np.repeat(np.arange(10), 100)
    noise = inject_noise(labels, 0.2, "symmetric", seed=3)
    assert noise.flipped.sum() == 200
    assert np.array_equal(noise.true_labels, labels)
    assert (noise.labels[noise.flipped] != labels[noise.flipped]).all()
    # every class receives flips, none is favoured beyond chance
    received = np.bincount(noise.labels[noise.flipped], minlength=10)
    assert received.min() > 5 and received.max() < 40
    again = inject_noise(labels, 0.2, "symmetric", seed=3)
    assert np.array_equal(again.labels, noise.labels)
    other = inject_noise(labels, 0.2, "symmetric", seed=4)
    assert not np.array_equal(other.labels, noise.labels)


def test_asymmetric_noise_follows_the_cifar10_map():
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    labels = np.repeat(np.arange(10), 50)
    noise = inject_noise(labels, 0.4, "asymmetric", seed=0, class_names=names)
    moved = {(int(a), int(b)) for a, b in zip(labels[noise.flipped], noise.labels[noise.flipped])}
    assert moved == {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}
    for src in (9, 2, 4, 3, 5):  # round(0.4 * 50) of each source class, read from the truth
        assert (noise.flipped & (labels == src)).sum() == 20
    assert not noise.flipped[np.isin(labels, [0, 1, 6, 7, 8])].any()


def test_noise_rejects_bad_requests():
    with pytest.raises(ValueError, match="rate"):
        inject_noise([0, 1, 2], 1.5)
    with pytest.raises(ValueError, match="noise_type"):
        inject_noise([0, 1, 2], 0.1, "uniform")
    with pytest.raises(ValueError, match="class map"):
        inject_noise([0, 1, 2], 0.1, "asymmetric", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="itself"):
        inject_noise([0, 1, 2], 0.1, "asymmetric", flips={1: 1})
    with pytest.raises(ValueError, match="classes"):
        inject_noise([0, 1, 5], 0.1, num_classes=3)


def test_labels_table_round_trips(tmp_path):
    noise = inject_noise(np.arange(20) % 4, 0.25, seed=1)
    noise.write(tmp_path / "labels.parquet", np.arange(100, 120))
    ids, noisy, true, meta = read_labels(tmp_path / "labels.parquet")
    assert np.array_equal(ids, np.arange(100, 120))
    assert np.array_equal(noisy, noise.labels) and np.array_equal(true, noise.true_labels)
    assert meta["noise_type"] == "symmetric" and meta["rate"] == 0.25


# ------------------------------------------------------------------ the audit
def test_flags_find_planted_flips():
    tables, true, given = planted()
    result = audit(tables, true_labels=true)
    m = result.metrics["flag"]
    # a ranking that ignored the labels would sit near precision 0.2 and AUROC 0.5
    assert m["auroc"] > 0.99
    assert m["precision"] > 0.95
    assert m["recall"] > 0.75
    assert result.metrics["true_noise_rate"] == pytest.approx(0.2)
    # per-class estimated noise rates are near the planted 20%
    assert np.all(np.abs(result.noise_rates - 0.2) < 0.08)


def test_training_dynamics_beat_the_last_round_alone():
    tables, true, _ = planted()
    # the last round has begun to fit the wrong labels; earlier rounds have not
    for count in ("gap", "confident_joint"):
        last_only = audit(tables[-1:], count=count, true_labels=true).metrics["flag"]
        dynamics = audit(tables, count=count, true_labels=true).metrics["flag"]
        assert dynamics["f1"] > last_only["f1"] + 0.03
    assert dynamics["recall"] > last_only["recall"] + 0.1  # the joint's count alone


def test_gap_count_recovers_what_the_confident_joint_misses():
    tables, true, _ = planted()
    joint = audit(tables, true_labels=true).metrics["flag"]
    gap = audit(tables, count="gap", true_labels=true).metrics["flag"]
    assert gap["recall"] > joint["recall"] + 0.1
    assert gap["precision"] > 0.95


def class_dependent(seed=0):
    """Flips only from class 0 to class 1 (a quarter of class 0). The student puts most of
    a flipped sample's mass on class 0; a fifth of the real class-1 samples are hard, with
    most of their mass on classes 2 and 3, so they have a lower probability of label 1 than
    the flipped ones."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(4), 400)
    given = true.copy()
    flipped = np.flatnonzero(true == 0)[:100]
    given[flipped] = 1
    p = np.zeros((len(true), 4))
    p[true == 0] = [0.70, 0.10, 0.10, 0.10]
    p[flipped] = [0.80, 0.15, 0.025, 0.025]
    p[true == 1] = [0.03, 0.91, 0.03, 0.03]
    hard = np.flatnonzero(true == 1)[:80]
    p[hard] = [0.0, 0.10, 0.45, 0.45]
    p[true >= 2] = [0.03, 0.03, 0.03, 0.03]
    p[true == 2, 2] = p[true == 3, 3] = 0.91
    p *= np.exp(rng.normal(0, 0.05, p.shape))  # jitter, so thresholds split classes
    logits = np.log(np.maximum(p, 1e-6))
    return logits, given, true


def test_channel_suspicion_finds_class_dependent_flips_that_self_confidence_misses():
    logits, given, true = class_dependent()
    with_probs = audit([score_table(logits, given, 0, probs=True)], true_labels=true)
    assert with_probs.suspicion == "channel"  # auto picks it when the softmax is there
    m = with_probs.metrics["flag"]
    assert m["recall"] > 0.95 and m["precision"] > 0.7 and m["auroc"] > 0.99
    # the same rounds without the softmax: 1 - prob_label ranks the hard class-1 samples
    # (0.10) above the flipped ones (0.15) and flags them instead
    plain = audit([score_table(logits, given, 0)], true_labels=true)
    assert plain.suspicion == "prob"
    hard = np.flatnonzero(true == 1)[:80]
    assert plain.to_pandas().flag.to_numpy()[hard].all()
    assert plain.metrics["flag"]["precision"] < 0.4
    assert with_probs.num_flagged == plain.num_flagged  # same joint, same counts
    table = with_probs.to_pandas()
    assert not table.flag.to_numpy()[hard].any()  # the hard ones stay
    with pytest.raises(ValueError, match="needs the student's whole softmax"):
        audit([score_table(logits, given, 0)], suspicion="channel")
    # the latest round with probs is read, also from a DataFrame of lists
    df = score_table(logits, given, 3, probs=True).to_pandas()
    again = audit([score_table(logits, given, 0), df], true_labels=true)
    assert again.suspicion == "channel"
    assert again.metrics["flag"]["recall"] > 0.95


def test_thresholds_are_per_class_not_global():
    # class 0 is hard and clean (the student is unsure of all of it); class 1 is easy, and
    # 200 hard class-0 samples carry label 1 by mistake
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1, 0], [1000, 1000, 200])
    given = np.repeat([0, 1, 1], [1000, 1000, 200])
    wrong = given != true
    signal = np.where(true == 0, 0.3, 4.0)
    logits = rng.normal(0, 0.3, (len(true), 2)) + signal[:, None] * EYE(2)[true]
    result = audit([score_table(logits, given, 0)], true_labels=true)
    susp = np.asarray(result.table.column("suspicion"))
    flagged = np.asarray(result.table.column("flag"))
    clean_hard = (true == 0) & ~wrong
    # one global cut that finds 80% of the errors would also flag many clean class-0 samples
    cut = np.quantile(susp[wrong], 0.2)
    assert (susp[clean_hard] >= cut).mean() > 0.2
    # the per-class thresholds do not
    assert flagged[clean_hard].mean() < 0.05
    assert result.metrics["flag"]["precision"] > 0.9
    # the joint alone misses the errors the student predicts without confidence
    assert result.metrics["flag"]["recall"] > 0.5
    assert audit([score_table(logits, given, 0)], count="gap",
                 true_labels=true).metrics["flag"]["recall"] > 0.9


def test_kind_splits_mislabeled_from_quantization_fragile():
    k, n = 4, 400
    rng = np.random.default_rng(1)
    true = np.arange(n) % k
    given = true.copy()
    mis = np.arange(0, 40)          # wrong labels: student and reference see the true class
    given[mis] = (true[mis] + 1) % k
    frag = np.arange(40, 80)        # right labels the quantized student gets wrong
    student_class = true.copy()
    student_class[frag] = (true[frag] + 2) % k
    logits = rng.normal(0, 0.3, (n, k)) + 6 * EYE(k)[student_class]
    ref = rng.normal(0, 0.3, (n, k)) + 6 * EYE(k)[true]
    result = audit([score_table(logits, given, 0, ref)], true_labels=true)
    kind = np.asarray(result.table.column("kind").to_pylist(), dtype=object)
    flag = np.asarray(result.table.column("flag"))
    assert flag[mis].all() and flag[frag].all()
    assert (kind[mis] == "mislabeled").all()
    assert (kind[frag] == "fragile").all()
    assert (kind[~flag] == None).all()  # noqa: E711 - elementwise on an object array
    # only the mislabeled kind counts against the true labels
    assert result.metrics["mislabeled_kind"]["precision"] == 1.0
    assert result.metrics["mislabeled_kind"]["recall"] == 1.0
    sugg = np.asarray(result.table.column("suggested_label").to_pylist(), dtype=object)
    assert (sugg[mis] == true[mis]).all()
    # the report's given-vs-suggested table counts exactly the flagged pairs
    from coreset_curate.labels.report import _confusion

    table = np.array(_confusion(result)[1])
    expected = np.zeros((k, k + 1), dtype=int)
    for g, s_ in zip(given[flag], sugg[flag]):
        expected[g, k if s_ is None else s_] += 1
    assert np.array_equal(table, expected)


def test_without_a_reference_kind_is_unknown():
    tables, true, _ = planted(n=600, memorize=(0.0,))
    no_ref = tables[0].drop_columns(["ds", "ref_pred", "ref_prob_label"])
    result = audit([no_ref])
    kinds = result.kind_counts()
    assert kinds["unknown"] == result.num_flagged > 0
    assert result.table.column("ref_pred").null_count == result.table.num_rows


def test_flag_metrics_by_hand():
    flag = np.array([1, 1, 0, 0, 1], bool)
    noisy = np.array([1, 0, 1, 0, 1], bool)
    susp = np.array([0.9, 0.8, 0.7, 0.1, 0.95])
    m = flag_metrics(flag, susp, noisy)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # pairs (noisy, clean) ranked right: 0.9>0.8, 0.9>0.1, 0.7<0.8, 0.7>0.1, 0.95>both
    assert m["auroc"] == pytest.approx(5 / 6)


def test_subset_share_per_epoch():
    tables, true, _ = planted(n=500, memorize=(0.0,))
    result = audit(tables)
    flag = np.asarray(result.table.column("flag"))
    ids = np.asarray(result.table.column("sample_id"))
    chosen0 = ids[flag][:10].tolist() + ids[~flag][:30].tolist()  # 25% flagged
    chosen1 = ids[~flag][:40].tolist()                              # none flagged
    index = pa.table({"epoch": pa.array([0] * 40 + [1] * 40, pa.int32()),
                      "sample_id": pa.array(chosen0 + chosen1, pa.int64()),
                      "weight": pa.array(np.ones(80), pa.float32())})
    shares = audit(tables, index=index).subset_share
    assert [s["epoch"] for s in shares] == [0, 1]
    assert shares[0]["flagged"] == pytest.approx(0.25)
    assert shares[1]["flagged"] == 0.0


def test_audit_rejects_scores_of_another_dataset():
    from coreset_curate.data import load_data

    tables, _, _ = planted(n=300, memorize=(0.0,))
    with pytest.raises(ValueError, match="other ids"):
        audit(tables, data=load_data("digits", "train"))
    with pytest.raises(ValueError, match="suspicion"):
        audit(tables, suspicion="loss")
    with pytest.raises(ValueError, match="one label per"):
        audit(tables, true_labels=np.zeros(5))


# ------------------------------------------------------------------ the report
def test_report_files_and_schema(tmp_path):
    tables, true, _ = planted(n=600)
    result = audit(tables, true_labels=true)
    paths = result.write(tmp_path / "rep")
    table = pq.read_table(paths["table"])
    assert table.schema.remove_metadata().equals(AUDIT_SCHEMA)
    meta = json.loads(table.schema.metadata[b"coreset_curate"])
    assert meta["kind"] == "audit" and meta["epochs"] == [0, 4, 8]
    page = paths["html"].read_text()
    assert "http://" not in page and "https://" not in page  # works offline
    assert page.count("data:image/png;base64,") >= 2
    assert f"{result.num_flagged:,} flagged" in page
    md = paths["markdown"].read_text()
    assert f"{result.metrics['flag']['precision']:.4f}" in md
    # an existing report is not replaced without overwrite, and stays as it was
    before = paths["html"].read_bytes()
    with pytest.raises(FileExistsError):
        result.write(tmp_path / "rep")
    assert paths["html"].read_bytes() == before


def test_class_names_are_escaped_in_the_html(tmp_path):
    tables, _, _ = planted(n=400, k=3, memorize=(0.0,))
    names = ["<script>alert(1)</script>", "a&b", "c|d"]
    result = audit(tables, class_names=names)
    page = result.write(tmp_path / "rep")["html"].read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a&amp;b" in page


def test_report_shows_thumbnails_of_flagged_images(tmp_path):
    from coreset_curate.data import load_data

    data = load_data("digits", "train")
    rng = np.random.default_rng(0)
    true = data.labels.numpy()
    given = inject_noise(true, 0.1, seed=0, num_classes=10).labels
    logits = rng.normal(0, 1, (len(true), 10)) + 5 * EYE(10)[true]
    result = audit([score_table(logits, given, 0, ids=data.sample_ids)], data=data.with_labels(given))
    page = result.write(tmp_path / "rep", data=data, max_examples=5)["html"].read_text()
    # 3 plots + 5 thumbnails of the one group (every flag is "unknown": no reference)
    assert page.count("data:image/png;base64,") == 2 + 5
    assert result.class_names == data.class_names


def test_trainer_label_noise_key_is_checked():
    from coreset_curate.training import TrainConfig

    with pytest.raises(ValueError, match="label_noise type"):
        TrainConfig(label_noise={"rate": 0.1, "type": "uniform"})
    with pytest.raises(ValueError, match="label_noise must be"):
        TrainConfig(label_noise={"rate": 0.1, "colour": "red"})
    assert TrainConfig(label_noise={"rate": 0.2, "seed": 3}).label_noise["rate"] == 0.2


def test_tables_without_max_prob_still_flag_planted_flips():
    # older score tables lack max_prob: every disagreement then counts as confident
    tables, true, _ = planted(memorize=(0.0,))
    old = [t.drop_columns(["max_prob"]) for t in tables]
    m = audit(old, true_labels=true).metrics["flag"]
    assert m["flagged"] > 0
    assert m["recall"] > 0.8 and m["precision"] > 0.6
