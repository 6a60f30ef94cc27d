import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from coreset_curate.data import default_transforms, load_data
from coreset_curate.tasks.classification.models import create_model
from coreset_curate.quant import quantize_model
from coreset_curate import score_dataset
from coreset_curate.common.tables import SCORE_SCHEMA, table_metadata, validate_scores


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", "train").subset(np.arange(300))
    train_tf, eval_tf = default_transforms(data)
    ref = create_model("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    student = create_model("small_cnn", num_classes=10, in_channels=1, width=8)
    student.load_state_dict(ref.state_dict())
    calib = [eval_tf(data.images[:128])]
    quantize_model(student, 3, 3, calibration=calib).eval()
    return data, train_tf, eval_tf, student, ref


def test_every_score_equals_a_per_sample_computation(setup):
    data, _, eval_tf, student, ref = setup
    table = score_dataset(student, data, ref, transform=eval_tf, epoch=4, batch_size=64)
    df = table.to_pandas()
    with torch.no_grad():
        for i in range(0, len(data), 7):
            x = eval_tf(data.images[i : i + 1])
            z, zr = student(x)[0].double(), ref(x)[0].double()
            y = int(data.labels[i])
            p = [math.exp(v) for v in z.tolist()]
            p = [v / sum(p) for v in p]
            pr = [math.exp(v) for v in zr.tolist()]
            pr = [v / sum(pr) for v in pr]
            row = df.iloc[i]
            assert row.sample_id == data.sample_ids[i] and row.label == y and row.epoch == 4
            evs = math.sqrt(sum((pk - (k == y)) ** 2 for k, pk in enumerate(p)))
            ds = math.sqrt(sum((a - b) ** 2 for a, b in zip(p, pr)))
            others = [v for k, v in enumerate(z.tolist()) if k != y]
            assert row.evs == pytest.approx(evs, abs=1e-5)
            assert row.ds == pytest.approx(ds, abs=1e-5)
            assert row.loss == pytest.approx(-math.log(p[y]), abs=1e-5)
            assert row.margin == pytest.approx(z[y].item() - max(others), abs=1e-5)
            assert row.entropy == pytest.approx(-sum(v * math.log(v) for v in p if v > 0), abs=1e-5)
            assert row.pred == int(np.argmax(p)) and row.ref_pred == int(np.argmax(pr))
            assert row.prob_label == pytest.approx(p[y], abs=1e-6)
            assert row.ref_prob_label == pytest.approx(pr[y], abs=1e-6)


def test_evs_bounds_hold(setup):
    data, _, eval_tf, student, ref = setup
    df = score_dataset(student, data, ref, transform=eval_tf).to_pandas()
    gap = 1 - df.prob_label.to_numpy(np.float64)
    evs = df.evs.to_numpy(np.float64)
    assert (gap - 1e-6 <= evs).all() and (evs <= math.sqrt(2) * gap + 1e-6).all()
    assert ((df.ds >= 0) & (df.ds <= math.sqrt(2))).all()


def test_schema_and_metadata_follow_the_contract(setup):
    data, _, eval_tf, student, ref = setup
    table = score_dataset(student, data, ref, transform=eval_tf, epoch=2,
                          metadata={"arch": "small_cnn"})
    contract = pa.schema(list(table.schema.remove_metadata())[: len(SCORE_SCHEMA)])
    assert contract.equals(SCORE_SCHEMA)
    assert table.schema.names[len(SCORE_SCHEMA):] == ["max_prob", "grand_last"]
    validate_scores(table)
    meta = table_metadata(table)
    for key in ("package_version", "arch", "w_bits", "a_bits", "fingerprint", "num_classes",
                "transform", "epoch", "created"):
        assert key in meta
    assert (meta["w_bits"], meta["a_bits"], meta["epoch"]) == (3, 3, 2)
    assert meta["fingerprint"] == data.fingerprint
    assert meta["transform"]["kind"] == "EvalTransform"


def test_batch_size_does_not_change_scores_and_runs_repeat(setup):
    data, _, eval_tf, student, ref = setup
    a = score_dataset(student, data, ref, transform=eval_tf, batch_size=300).to_pandas()
    b = score_dataset(student, data, ref, transform=eval_tf, batch_size=17).to_pandas()
    c = score_dataset(student, data, ref, transform=eval_tf, batch_size=17).to_pandas()
    for col in ("evs", "ds", "loss", "margin", "entropy", "prob_label", "ref_prob_label"):
        assert np.abs(a[col].to_numpy() - b[col].to_numpy()).max() <= 1e-5
    assert b.equals(c)


def test_thread_count_does_not_change_scores(setup):
    data, _, eval_tf, student, ref = setup
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = score_dataset(student, data, ref, transform=eval_tf).to_pandas()
        torch.set_num_threads(2)
        two = score_dataset(student, data, ref, transform=eval_tf).to_pandas()
    finally:
        torch.set_num_threads(before)
    for col in ("evs", "ds", "loss", "margin", "entropy", "prob_label", "grand_last"):
        assert np.abs(one[col].to_numpy() - two[col].to_numpy()).max() <= 1e-5, col
    assert (one["pred"] == two["pred"]).all()


def test_without_reference_the_reference_columns_are_null(setup):
    data, _, eval_tf, student, _ = setup
    table = score_dataset(student, data, transform=eval_tf)
    for col in ("ds", "ref_pred", "ref_prob_label"):
        assert table.column(col).null_count == table.num_rows
    assert table.column("evs").null_count == 0


def test_scoring_refuses_augmentation_and_leaves_train_mode_alone(setup):
    data, train_tf, eval_tf, student, ref = setup
    with pytest.raises(TypeError, match="EvalTransform"):
        score_dataset(student, data, ref, transform=train_tf)
    student.train()
    score_dataset(student, data, ref, transform=eval_tf)
    assert student.training
    student.eval()
    with pytest.raises(ValueError, match="unknown score"):
        score_dataset(student, data, transform=eval_tf, scores=["nope"])


def test_max_prob_and_embeddings(setup):
    data, _, eval_tf, student, ref = setup
    table = score_dataset(student, data, ref, transform=eval_tf, embeddings=True)
    df = table.to_pandas()
    assert (df.max_prob >= df.prob_label - 1e-7).all()
    assert ((df.pred == df.label) == np.isclose(df.max_prob, df.prob_label)).mean() > 0.99
    emb = table.column("embedding")
    assert emb.type.value_type == pa.float16() and emb.type.list_size == 64  # 8 * width 8
    # the embedding is the input of the classifier: recompute one row by hand
    feats = {}
    h = student.classifier.register_forward_pre_hook(lambda m, a: feats.update(x=a[0]))
    with torch.no_grad():
        student(eval_tf(data.images[5:6]))
    h.remove()
    row = np.asarray(emb[5].values.to_numpy(zero_copy_only=False), dtype=np.float32)
    assert np.allclose(row, feats["x"][0].numpy(), atol=1e-2, rtol=1e-2)


def test_probs_column_is_the_whole_softmax(setup):
    data, _, eval_tf, student, ref = setup
    table = score_dataset(student, data, ref, transform=eval_tf, probs=True)
    col = table.column("probs")
    assert col.type.value_type == pa.float32() and col.type.list_size == data.num_classes
    p = np.asarray(col.combine_chunks().flatten().to_numpy()).reshape(len(data), -1)
    df = table.to_pandas()
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(p.argmax(1), df.pred.to_numpy())
    assert np.allclose(p[np.arange(len(df)), df.label], df.prob_label, atol=1e-6)
    with torch.no_grad():  # one row against the student's own softmax
        want = torch.softmax(student(eval_tf(data.images[7:8])).float(), 1)[0].numpy()
    assert np.allclose(p[7], want, atol=1e-5)
    assert "probs" not in score_dataset(student, data, ref, transform=eval_tf).column_names


def test_grand_last_equals_the_autograd_gradient_norm():
    torch.manual_seed(1)
    data = load_data("digits", "train").subset(np.arange(40))
    _, eval_tf = default_transforms(data)
    for first_last in ("float", "int8"):
        model = create_model("small_cnn", num_classes=10, in_channels=1, width=8)
        quantize_model(model, 4, 4, first_last=first_last,
                       calibration=[eval_tf(data.images)]).eval()
        table = score_dataset(model, data, transform=eval_tf, batch_size=16)
        fc = model.classifier
        for i in range(0, 40, 9):
            x = eval_tf(data.images[i : i + 1])
            # the gradient w.r.t. the weight matrix the layer multiplies by (quantized or not)
            w_used = fc.quantized_weight().detach().requires_grad_(True) if first_last == "int8" \
                else fc.weight
            feats = {}
            h = (fc.a_quant.register_forward_hook(lambda m, a, o: feats.update(x=o))
                 if first_last == "int8" else
                 fc.register_forward_pre_hook(lambda m, a: feats.update(x=a[0])))
            model(x)
            h.remove()
            logits = torch.nn.functional.linear(feats["x"].detach(), w_used, fc.bias)
            loss = torch.nn.functional.cross_entropy(logits, data.labels[i : i + 1])
            (grad,) = torch.autograd.grad(loss, w_used)
            assert table.column("grand_last")[i].as_py() == pytest.approx(
                float(grad.norm()), rel=1e-4)


def test_cached_reference_gives_identical_scores_and_skips_the_forward(setup, tmp_path):
    from coreset_curate.scoring.refcache import cached_reference
    from coreset_curate.data import FingerprintMismatch

    data, _, eval_tf, student, ref = setup
    calls = []
    hook = ref.register_forward_hook(lambda m, a, o: calls.append(1))
    live = score_dataset(student, data, ref, transform=eval_tf, batch_size=64)
    n_live = len(calls)
    first, hit1 = cached_reference(ref, data, eval_tf, cache_dir=tmp_path, checkpoint_sha256="a",
                                   batch_size=64)
    n_filled = len(calls)
    second, hit2 = cached_reference(ref, data, eval_tf, cache_dir=tmp_path, checkpoint_sha256="a")
    assert (hit1, hit2) == (False, True)
    assert n_filled - n_live == n_live  # one pass to fill the cache
    assert len(calls) == n_filled  # none to read it back
    cached = score_dataset(student, data, second, transform=eval_tf, batch_size=64)
    assert len(calls) == n_filled  # the reference forward is not called again
    hook.remove()
    for col in ("ds", "ref_pred", "ref_prob_label", "evs"):
        assert cached.column(col).equals(live.column(col))
    # another checkpoint or other labels: not reused
    _, hit3 = cached_reference(ref, data, eval_tf, cache_dir=tmp_path, checkpoint_sha256="b")
    assert hit3 is False
    other = data.with_labels((data.labels + 1) % 10)
    _, hit4 = cached_reference(ref, other, eval_tf, cache_dir=tmp_path, checkpoint_sha256="a")
    assert hit4 is False
    with pytest.raises(FingerprintMismatch):
        score_dataset(student, other, second, transform=eval_tf)


def test_top_k_reference_cache_for_many_classes(monkeypatch):
    from coreset_curate.scoring import refcache

    monkeypatch.setattr(refcache, "DENSE_MAX_CLASSES", 4)
    monkeypatch.setattr(refcache, "TOP_K", 3)
    torch.manual_seed(0)
    data = load_data("digits", "train").subset(np.arange(64))
    _, eval_tf = default_transforms(data)
    ref = create_model("small_cnn", num_classes=10, in_channels=1, width=8).eval()
    out = refcache.compute_reference(ref, data, eval_tf)
    assert out.probs is None and out.top_probs.shape == (64, 3)
    with torch.no_grad():
        q = torch.softmax(ref(eval_tf(data.images)), dim=1)
    dense = out.rows(torch.arange(64))
    top3 = q.topk(3, dim=1)
    assert torch.equal(dense.argmax(1), q.argmax(1))
    kept = dense.gather(1, top3.indices)
    assert torch.allclose(kept, top3.values, rtol=1e-3, atol=1e-4)
    tail = (q.sum(1) - top3.values.sum(1))
    assert torch.allclose(dense.sum(1), 1 - tail, atol=2e-3)  # the tail is what is dropped


def test_channels_last_and_bf16_options(setup):
    data, _, eval_tf, student, ref = setup
    base = score_dataset(student, data, ref, transform=eval_tf).to_pandas()
    cl = score_dataset(student, data, ref, transform=eval_tf, channels_last=True).to_pandas()
    assert np.abs(base.evs - cl.evs).max() <= 1e-5
    bf = score_dataset(student, data, ref, transform=eval_tf, bf16=True).to_pandas()
    assert bf.evs.dtype == np.float32 and np.isfinite(bf.evs).all()
    # bfloat16 keeps 8 bits of mantissa: close, not equal
    assert np.abs(base.prob_label - bf.prob_label).mean() < 0.05
