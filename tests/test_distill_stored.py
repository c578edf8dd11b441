"""Distillation from stored teacher embeddings (``distill.embeddings``): the train stream delivers
each sample's row exactly as ``clip_jax.embed`` wrote it for its key (shuffle, two processes,
worker restarts, a SIGKILL resume), samples without a row are skipped and counted, the step's
loss equals online distillation from the same teacher, and the config is checked in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from clip_jax import distill, embed, gradients, inference, input_pipeline, train
from clip_jax import topology as tpu
from clip_jax.data import pipeline, stored, tario, transforms
from clip_jax.data.tokenizer import load_tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs"))
import test_embed  # noqa: E402
import tiny  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS, PER_SHARD, DROPPED = 4, 12, "s1-004"  # shard 3 is never embedded; one key of shard 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 shards (with corrupt / captionless samples), a tiny teacher bundle, and its embeddings
    of shards 0-2 with one key removed: ``(spec, teacher, emb dir, {key: (img, txt)})``."""
    root = tmp_path_factory.mktemp("stored")
    spec, _ = test_embed.make_shards(str(root / "shards"), SHARDS, PER_SHARD)
    teacher = test_embed.tiny_bundle(str(root))
    model = inference.load(teacher, batch_size=16)
    urls = embed.list_shards(spec)
    out = str(root / "emb")
    embed.embed_shards(model, urls[:3], out, teacher, 16, log=lambda _: None)
    base = os.path.join(out, "00001")
    keys = json.load(open(base + ".keys.json"))
    keep = [i for i, k in enumerate(keys) if k != DROPPED]
    assert len(keep) == len(keys) - 1
    for suffix in (".img.npy", ".txt.npy"):
        np.save(base + suffix, np.load(base + suffix)[keep])
    json.dump([keys[i] for i in keep], open(base + ".keys.json", "w"))
    rows = {}
    for name in ("00000", "00001", "00002"):
        sh = embed.load_shard(out, name)
        rows.update({k: (sh.image[i], sh.text[i]) for i, k in enumerate(sh.keys)})
    return spec, teacher, out, rows


def _tok(teacher):
    return load_tokenizer(teacher)


def _iterator(corpus, p=0, workers=2, mode="thread", **kw):
    spec, teacher, out, _ = corpus
    return pipeline.TrainIterator(spec, _tok(teacher), 32, 4, seed=3, process_index=p,
                                  process_count=2, workers=workers, shuffle_buffer=8,
                                  context_length=16, worker_mode=mode, embeddings=(out,), **kw)


def _check_rows(batch, rows):
    assert batch["stored0_image"].dtype == np.float16 and batch["stored0_image"].shape[0] == 4
    for i, key in enumerate(batch["key"]):
        img, txt = rows[str(key)]  # KeyError: a sample without a stored row was delivered
        assert batch["stored0_image"][i].tobytes() == img.tobytes(), key
        assert batch["stored0_text"][i].tobytes() == txt.tobytes(), key


def test_each_row_is_the_one_embed_wrote_for_its_key_across_shuffle_processes_and_resume(corpus):
    _, _, _, rows = corpus
    seen, skipped, shuffled = [], 0, False
    for p in (0, 1):
        it = _iterator(corpus, p)
        batches = [next(it) for _ in range(8)]  # 4 per worker: more than one shard each
        for b in batches:
            _check_rows(b, rows)
            seen += [str(k) for k in b["key"]]
            shuffled |= list(b["key"]) != sorted(b["key"])
        skipped += it.stats[stored.SKIPPED]
        # resume from the state after batch 3 (workers restarted): the same batches follow
        again = _iterator(corpus, p)
        for _ in range(3):
            next(again)
        state = again.get_state()
        again.close()
        resumed = _iterator(corpus, p)
        resumed.set_state(state)
        for b in batches[3:]:
            r = next(resumed)
            assert sorted(r) == sorted(b)
            for k in b:
                np.testing.assert_array_equal(r[k], b[k])
        it.close()
        resumed.close()
    assert shuffled
    assert set(seen) == set(rows)  # every embedded sample, of both processes, and only those
    assert DROPPED not in seen and not any(k.startswith("s3-") for k in seen)
    assert skipped > 0


def test_the_feed_places_stored_rows_and_a_wrong_directory_is_one_line(corpus, tmp_path):
    spec, teacher, out, _ = corpus
    c = tiny.get_config()
    c.data.source, c.data.train, c.distill.embeddings = "webdataset", spec, out
    fields = train.build(c, jax.devices()[:1]).objective.batch_fields(8)
    assert {k: (f.shape, f.dtype) for k, f in fields.items()} == {
        "stored0_image": ((8, 32), np.float16), "stored0_text": ((8, 32), np.float16)}
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batch = input_pipeline.to_global(sh, next(_iterator(corpus, workers=0)))
    assert sorted(batch) == ["image", "stored0_image", "stored0_text", "text"]  # keys stay
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "embed.json").write_text(json.dumps({"embed_dim": 8}))
    for dirs, match in (((str(tmp_path / "nope"),), "is not a directory"),
                        ((str(tmp_path),), "embed.json is missing"),
                        ((str(empty),), "holds no finished shard of the 4 training shards")):
        with pytest.raises(ValueError, match=match) as e:
            pipeline.TrainIterator(spec, _tok(teacher), 32, 4, embeddings=dirs)
        assert "\n" not in str(e.value)
    bad = tmp_path / "bad"  # a shard whose rows are not embed.json's width
    os.makedirs(bad)
    for f in os.listdir(out):
        data = open(os.path.join(out, f), "rb").read()
        if f == "embed.json":
            data = json.dumps({**json.loads(data), "embed_dim": 7}).encode()
        open(bad / f, "wb").write(data)
    it = pipeline.TrainIterator(spec, _tok(teacher), 32, 4, embeddings=(str(bad),))
    with pytest.raises(ValueError, match=r"img.npy has shape \(\d+, 32\), expected"):
        next(it)


def _student(corpus, **distill_kw):
    spec, teacher, out, _ = corpus
    c = tiny.get_config()
    c.batch_size = 8
    c.data.source, c.data.train, c.data.tokenizer = "webdataset", spec, teacher
    c.data.workers, c.data.shuffle_buffer = 0, 8
    c.distill.teacher_logit_scale = 20.0
    for k, v in distill_kw.items():
        c.distill[k] = v
    return c


def test_config_errors_are_one_line(corpus, tmp_path):
    _, teacher, out, _ = corpus
    cases = [(dict(embeddings=out, teachers=(teacher,)), "both set"),
             (dict(embeddings=out, kd_weight=0.0), "nothing to distil")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            train.check_config(_student(corpus, **kw), jax.devices()[:1])
        assert "\n" not in str(e.value)
    c = _student(corpus, embeddings=out)
    c.data.source = "synthetic"
    with pytest.raises(ValueError, match="needs data.source='webdataset'"):
        train.check_config(c, jax.devices()[:1])
    old = tmp_path / "old"  # an embed.json without the logit scale, and scale 0 asked for
    old.mkdir()
    report = json.load(open(os.path.join(out, "embed.json")))
    (old / "embed.json").write_text(json.dumps({k: v for k, v in report.items()
                                                if k != "logit_scale"}))
    with pytest.raises(ValueError, match="records no logit_scale"):
        train.build(_student(corpus, embeddings=str(old), teacher_logit_scale=0.0),
                    jax.devices()[:1])
    setup = train.build(_student(corpus, embeddings=out, teacher_logit_scale=0.0),
                        jax.devices()[:1])
    want = np.exp(inference.load(teacher).logit_scale)
    np.testing.assert_allclose(setup.stored[0].logit_scale, want, rtol=1e-6)
    assert setup.stored[0].embed_dim == 32 and not setup.teachers


def _unaugmented_batch(corpus, n=8):
    """The first ``n`` embedded samples as the step sees them without augmentation: embed's
    transform (shorter side resized, center crop) as uint8, the captions' token ids, and the
    rows embed wrote for their keys."""
    spec, teacher, _, rows = corpus
    tok = _tok(teacher)
    keys, images, captions = [], [], []
    for key, image, caption in tario.iterate_samples(spec):
        if key in rows:
            keys.append(key)
            images.append(transforms.resize_center_crop(image, 32))
            captions.append(caption)
        if len(keys) == n:
            break
    return {"image": np.stack(images), "text": np.asarray(tok(captions, 16), np.int32),
            "stored0_image": np.stack([rows[k][0] for k in keys]),
            "stored0_text": np.stack([rows[k][1] for k in keys])}


def test_the_stored_loss_equals_online_distillation_from_the_same_teacher(corpus):
    _, teacher, out, _ = corpus
    host = _unaugmented_batch(corpus)
    results = {}
    for name, kw in (("online", dict(teachers=(teacher,))), ("stored", dict(embeddings=out))):
        c = _student(corpus, clip_weight=0.5, kd_weight=2.0, feature_weight=0.0, **kw)
        setup = train.build(c, jax.devices()[:1])
        state = train.init_state(setup)
        tparams = distill.place(setup.teachers, setup.mesh, "float32")
        keys = {*input_pipeline.BATCH_KEYS, *setup.objective.batch_fields(8)}
        batch = input_pipeline.to_global(setup.batch_sharding,
                                         {k: v for k, v in host.items() if k in keys})
        with jax.set_mesh(setup.mesh):
            loss, parts, grads, _ = jax.jit(lambda p, b, t, s=setup: (
                gradients.loss_and_grads(s, p, b, 0, t)))(state.params, batch, tparams)
            if name == "online":  # what the teacher computes online == the rows embed wrote
                teach = jax.jit(lambda t, b, s=setup: s.objective.terms[-1].targets(t, b))(
                    tparams, batch)
        results[name] = (float(loss), {k: float(v) for k, v in parts.items()},
                         jax.device_get(grads))
    np.testing.assert_allclose(host["stored0_image"].astype(np.float32), teach[0][0], atol=1e-3)
    np.testing.assert_allclose(host["stored0_text"].astype(np.float32), teach[0][1], atol=1e-3)
    (lo, po, go), (ls, ps, gs) = results["online"], results["stored"]
    assert po["clip"] == ps["clip"]  # the same student on the same pixels
    np.testing.assert_allclose(ls, lo, rtol=2e-4)  # float16 rows against float32 features
    np.testing.assert_allclose(ps["kd"], po["kd"], rtol=5e-4)
    for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(go), strict=True):
        assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-6


# Two JAX processes (jax.distributed on 127.0.0.1), each reading its part of the shards through
# input_pipeline.make_data; both are SIGKILLed after saving their iterator state at batch 3,
# then restarted from it. Thread workers: a killed process leaves no orphan worker behind.
_READER = """
import json, os, signal, sys
from clip_jax import distributed, files
distributed.initialize()
import jax, numpy as np
from jax.experimental import multihost_utils
from clip_jax import input_pipeline, models
from clip_jax.config import base_config
from clip_jax.data.tokenizer import load_tokenizer
spec, teacher, emb, work, phase = sys.argv[1:6]
c = base_config()
c.seed, c.data.source, c.data.train, c.distill.embeddings = 3, "webdataset", spec, emb
c.data.workers, c.data.worker_mode, c.data.shuffle_buffer = 2, "thread", 8
data = input_pipeline.make_data(c, models.get_model_config("tiny"), 4, load_tokenizer(teacher))
p = jax.process_index()
if phase == "resume":
    data.set_state(json.load(open(f"{work}/state{p}.json")))
with open(f"{work}/{phase}{p}.jsonl", "w") as out:
    for i in range(6):
        b = next(data)
        out.write(json.dumps({"key": b["key"].tolist(),
                              "img": b["stored0_image"].view(np.uint16).tolist(),
                              "txt": b["stored0_text"].view(np.uint16).tolist()}) + "\\n")
        out.flush()
        if phase == "first" and i == 2:
            files.write_json(f"{work}/state{p}.json", data.get_state())
            multihost_utils.sync_global_devices("saved")
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _rows_of(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def test_two_processes_and_a_sigkill_resume_deliver_embeds_rows(corpus, tmp_path):
    spec, teacher, out, rows = corpus
    env = dict(os.environ, LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    launch = os.path.join(REPO, "launch", "local_multiprocess.sh")
    for phase in ("first", "resume"):
        run = subprocess.run([launch, "2", "1", sys.executable, "-c", _READER, spec, teacher, out,
                              str(tmp_path), phase], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
        logs = "".join((tmp_path / "logs" / f"process_{i}.log").read_text()[-2000:]
                       for i in range(2))
        if phase == "first":
            assert run.returncode != 0 and "Traceback" not in logs, logs  # killed, not failed
        else:
            assert run.returncode == 0, logs
    seen = set()
    for p in (0, 1):
        assert os.path.isfile(tmp_path / f"state{p}.json")
        got = _rows_of(tmp_path / f"first{p}.jsonl")[:3] + _rows_of(tmp_path / f"resume{p}.jsonl")
        assert len(got) == 9
        ref = _iterator(corpus, p, mode="thread")  # uninterrupted, in this process
        for g in got:
            want = next(ref)
            assert g["key"] == want["key"].tolist()
            assert g["img"] == want["stored0_image"].view(np.uint16).tolist()
            for key, img, txt in zip(g["key"], g["img"], g["txt"], strict=True):
                assert img == rows[key][0].view(np.uint16).tolist(), key
                assert txt == rows[key][1].view(np.uint16).tolist(), key
                seen.add((p, key))
        ref.close()
    mine = [[k for q, k in sorted(seen) if q == p] for p in (0, 1)]
    assert mine[0] and mine[1] and mine[0] != mine[1]  # each process its own part


def test_train_loop_from_stored_embeddings_with_a_feature_projection(corpus, tmp_path):
    """The loop on the shards with stored rows (no teacher loaded): the loss terms logged apart
    and summing with their weights to the loss, samples without rows counted; the student
    (width 24) learns a (24, 32) projection to the stored rows that its checkpoint carries and
    its export leaves out."""
    from clip_jax import checkpoint, sources

    _, _, out, _ = corpus
    c = _student(corpus, embeddings=out, clip_weight=1.0, kd_weight=2.0, feature_weight=0.5)
    c.model.embed_dim = 24
    c.total_steps, c.log_every_steps, c.checkpoint.every_steps = 2, 1, 0
    c.logging.tensorboard = False
    work = str(tmp_path / "run")
    last = train.train(c, work, jax.devices()[:1])
    rows = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl")) if '"loss"' in x]
    assert len(rows) == 2
    for r in rows:
        np.testing.assert_allclose(r["loss"], r["loss_clip"] + 2 * r["loss_kd"]
                                   + 0.5 * r["loss_feature"], rtol=1e-5)
    assert last["data/" + stored.SKIPPED] > 0
    setup = train.build(c, jax.devices()[:1])
    assert not setup.teachers and setup.stored[0].embed_dim == 32
    ckpt = checkpoint.Checkpointer(work, c.checkpoint, setup.state_shardings,
                                   setup.abstract_state)
    state, _ = ckpt.restore_latest()
    ckpt.close()
    proj = np.asarray(state.params[distill.EXTRA]["proj_0"])
    init = np.asarray(train.init_state(setup).params[distill.EXTRA]["proj_0"])
    assert proj.shape == (24, 32) and not np.array_equal(proj, init)  # trained, saved, read
    exported = sources.resolve(work)
    assert distill.EXTRA not in exported.params and exported.cfg.embed_dim == 24
    for k, v in setup.objective.model_params(jax.device_get(state.params)).items():
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(exported.params[k]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_plan_compiles_a_recipe_that_reads_stored_embeddings(corpus):
    """The TPU plan lowers the step on the batch the pipeline delivers: the stored rows too."""
    from clip_jax import plan
    if not tpu.libtpu_available():
        pytest.skip("needs libtpu (compile-only TPU devices)")
    spec, teacher, out, _ = corpus
    c = tiny.get_config()
    c.data.source, c.data.train, c.distill.embeddings = "webdataset", spec, out
    c.distill.kd_weight, c.distill.feature_weight = 1.0, 1.0  # + a projection to 32 wide rows
    c.mesh.data, c.mesh.fsdp = -1, 1
    r = plan.compiled_plan(c, "v5e:2x2")
    assert r["fits"] and r["stored_teachers"] == 1 and "teachers" not in r
    assert "1 (none runs in the step)" in plan.format_table(r)


def test_the_pipeline_delivers_a_teachers_own_ids_as_a_field_of_their_own(corpus):
    """A teacher whose tokenizer differs gets its ids from the host as ``teacher{k}_text``
    (:class:`clip_jax.distill.JointTokenizer`, tokenised in the workers), placed on the mesh
    beside the student's: here the teacher's tokenizer is the student's at a longer context."""
    from types import SimpleNamespace

    spec, teacher, _, _ = corpus
    tok = _tok(teacher)
    other = SimpleNamespace(own_text=True, tokenizer=tok,
                            cfg=SimpleNamespace(text=SimpleNamespace(context_length=24)))
    joint = distill.JointTokenizer(tok, 16, [SimpleNamespace(own_text=False), other])
    it = pipeline.TrainIterator(spec, joint, 32, 4, seed=3, workers=1, shuffle_buffer=8,
                                context_length=16, worker_mode="thread")
    host = next(it)
    it.close()
    key = distill.text_key(1)
    assert host[key].shape == (4, 24) and host[key].dtype == np.int32
    np.testing.assert_array_equal(host[key][:, 16:], 0)  # short captions: zeros after 16
    np.testing.assert_array_equal(host[key][:, :16], host["text"])
    batch = input_pipeline.to_global(jax.sharding.SingleDeviceSharding(jax.devices()[0]), host)
    assert sorted(batch) == ["image", key, "text"]
