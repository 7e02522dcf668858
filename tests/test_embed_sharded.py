"""`vit-zoo embed --output-dir`: clip-retrieval's layout as embedding-reader reads it, resume after kill -9, torchrun
ranks and job arrays equal to one process bit for bit, webdataset tars, path lists, refusals."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import fsspec
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
from helpers import REPO_ROOT, assert_cli_error, call_main
from PIL import Image
from reference import TINY
from safetensors.numpy import load_file

from vit_zoo.embed import Embedder

NPY_HEADER = re.compile(r"'shape': \(([0-9]+), ([0-9]+)\)")  # what embedding-reader parses, and only 2-D
NPY_DTYPE = re.compile(r"'descr': '([<f0-9]+)'")


def write_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, name in enumerate(names):
        size = (32 + index % 5, 40 + index % 3, 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """23 inputs: 4 images, 2 corrupt files (together one whole shard at --shard-size 2), 17 images (two in a
    sub-folder)."""
    folder = write_images(tmp_path_factory.mktemp("images") / "photos", [f"a{i:02d}.png" for i in range(4)])
    write_images(folder, [f"c{i:02d}.png" for i in range(15)], seed=1)
    write_images(folder / "sub", ["d00.png", "d01.jpg"], seed=2)
    (folder / "b_corrupt1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "b_corrupt2.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def read_like_embedding_reader(folder):
    """embedding-reader's parquet_npy reading: sorted ``img_emb/**/*.npy`` and ``metadata/**/*.parquet`` zipped
    pair by pair, each array's shape and dtype parsed from its header's first line, rows read after it."""
    fs = fsspec.filesystem("file")
    arrays = sorted(fs.glob(str(folder / "img_emb") + "/**/*.npy"))
    tables = sorted(fs.glob(str(folder / "metadata") + "/**/*.parquet"))
    assert len(arrays) == len(tables)
    embeddings, metadata = [], []
    for array, table_path in zip(arrays, tables):
        with open(array, "rb") as handle:
            first_line = handle.read(300).split(b"\n")[0]
            rows, dimension = map(int, NPY_HEADER.search(str(first_line)).groups())
            dtype = NPY_DTYPE.search(str(first_line)).group(1)
            handle.seek(len(first_line) + 1)
            embeddings.append(np.frombuffer(handle.read(), dtype=dtype).reshape(rows, dimension))
        table = pq.read_table(table_path)
        assert table.num_rows == rows
        metadata.append(table)
    return np.concatenate(embeddings), pa.concat_tables(metadata)


def files_of(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_layout_reads_as_embedding_reader_reads_it_and_equals_the_single_file(model_folder, image_dir, tmp_path, capsys):
    flags = ["--batch-size", 2, "--normalize", "--embedding-dtype", "float16", "--attention-map"]
    out = tmp_path / "out"
    code, stdout, err = call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 2, *flags)
    assert code == 0, err
    summary = f"embedded 21 images into {out} (2 skipped, reasons in {out / 'skipped'}): "
    assert re.fullmatch(re.escape(summary + "12 shards written, 0 already complete of 12; ") + r"[0-9.]+ images/s\n", stdout)
    assert err == ""

    embeddings, metadata = read_like_embedding_reader(out)
    assert embeddings.dtype == np.float16 and embeddings.shape == (21, TINY["output_dim"])
    np.testing.assert_allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1, atol=2e-3)
    assert metadata.column_names == ["key", "image_path", "width", "height"]
    images = sorted(p for p in image_dir.rglob("*") if p.is_file() and "corrupt" not in p.name)
    assert metadata.column("image_path").to_pylist() == [str(p) for p in images]
    assert metadata.column("key").to_pylist() == [p.relative_to(image_dir).as_posix() for p in images]
    assert metadata.column("width").to_pylist() == [Image.open(p).size[0] for p in images]
    assert metadata.column("height").to_pylist() == [Image.open(p).size[1] for p in images]

    # shard 02 held only the corrupt files: no 0-row array (it would shift embedding-reader's pairing), its reasons kept
    assert not (out / "img_emb" / "img_emb_02.npy").exists() and (out / "done" / "done_02.json").exists()
    skipped = pq.read_table(out / "skipped" / "skipped_02.parquet").to_pylist()
    assert [row["key"] for row in skipped] == ["b_corrupt1.png", "b_corrupt2.jpg"]
    assert skipped[0]["skip_reason"].startswith("cannot identify image file")
    assert sorted(p.name for p in (out / "skipped").iterdir()) == ["skipped_02.parquet"]
    maps = np.concatenate([np.load(path) for path in sorted((out / "attention").glob("*.npy"))])
    assert maps.dtype == np.float16 and maps.shape == (21, 4, 4)

    # --output of the same inputs with the same batches: the same numbers, bit for bit
    code, _, err = call_main(capsys, "embed", model_folder, image_dir, "--output", tmp_path / "one.safetensors", *flags)
    assert code == 0, err
    single = load_file(tmp_path / "one.safetensors")
    np.testing.assert_array_equal(single["embeddings"], embeddings)
    np.testing.assert_array_equal(single["attention_map"], maps)

    code, stdout, _ = call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 2, *flags)
    assert code == 0 and stdout == f"embedded 0 images into {out} (0 skipped): 0 shards written, 12 already complete of 12\n"


def test_a_folder_made_with_other_settings_or_damaged_is_refused_before_any_work(model_folder, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 4)[0] == 0
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 4, "--batch-size", 8),
        "embed",
        f"{out} was made with other settings (options.batch_size 32 there, 8 now)",
    )
    other = write_images(tmp_path / "other", ["x.png"])
    assert_cli_error(
        call_main(capsys, "embed", model_folder, other, "--output-dir", out, "--shard-size", 4),
        "embed",
        "inputs.count 23 there, 1 now",
    )
    (out / "img_emb" / "img_emb_1.npy").write_bytes(b"truncated")
    assert_cli_error(
        call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 4),
        "embed",
        f"shard 1 is broken: {out / 'img_emb' / 'img_emb_1.npy'} is missing or not the",
        f"delete {out / 'done' / 'done_1.json'} to compute the shard again",
    )
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.name != "img_emb_1.npy"} == {
        path: mtime for path, mtime in before.items() if path.name != "img_emb_1.npy"
    }


def test_job_arrays_together_equal_one_process(model_folder, image_dir, tmp_path, capsys):
    common = ["embed", model_folder, image_dir, "--shard-size", 3, "--batch-size", 3]
    assert call_main(capsys, *common, "--output-dir", tmp_path / "one")[0] == 0
    for job in range(3):
        code, out, err = call_main(capsys, *common, "--output-dir", tmp_path / "jobs", "--shard-index", job, "--num-shards", 3)
        assert code == 0 and f"{3 if job < 2 else 2} shards written" in out, err
    assert files_of(tmp_path / "jobs") == files_of(tmp_path / "one")


LAUNCHERS = {  # two processes on the CPU (gloo), as each launcher starts them
    "torchrun": ["torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    "accelerate": ["accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1"]
    + ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_ranks_of_a_launcher_together_equal_one_process(model_folder, image_dir, tmp_path, capsys, launcher):
    common = [model_folder, image_dir, "--shard-size", 4, "--batch-size", 2, "--num-workers", 1]
    assert call_main(capsys, "embed", *common, "--output-dir", tmp_path / "one")[0] == 0
    command = [sys.executable, "-m", *LAUNCHERS[launcher], "-m", "vit_zoo"]
    result = subprocess.run(
        [*command, "embed", *map(str, common), "--output-dir", str(tmp_path / "ranks")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    summary = f"embedded 21 images into {tmp_path / 'ranks'} (2 skipped, reasons in {tmp_path / 'ranks' / 'skipped'}): "
    assert len(result.stdout.splitlines()) == 1  # rank 0, for all ranks
    assert result.stdout.startswith(summary + "6 shards written, 0 already complete of 6; ")
    assert files_of(tmp_path / "ranks") == files_of(tmp_path / "one")


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_bit_identical_recomputing_only_unfinished_shards(model_folder, tmp_path, capsys):
    images = write_images(tmp_path / "many", [f"{i:04d}.png" for i in range(600)])
    common = ["embed", model_folder, images, "--shard-size", 20, "--batch-size", 10]
    assert call_main(capsys, *common, "--output-dir", tmp_path / "whole")[0] == 0

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "vit_zoo", *map(str, common), "--output-dir", str(out), "--num-workers", "1"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("done/*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = psutil.Process(process.pid).children()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert workers and psutil.wait_procs(workers, timeout=30)[1] == []  # its loader workers end with it
    done = sorted(path.name for path in out.glob("done/*.json"))
    assert 1 <= len(done) < 30, done  # killed after a shard completed and before the last
    complete = [name.removeprefix("done_").removesuffix(".json") for name in done]
    kept = {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.stem.endswith(tuple(complete))
    }

    code, stdout, err = call_main(capsys, *common, "--output-dir", out)
    assert code == 0, err
    assert f"{30 - len(done)} shards written, {len(done)} already complete of 30" in stdout
    assert files_of(out) == files_of(tmp_path / "whole")  # no staging file left behind either
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept  # complete shards were not recomputed


def write_tar(path, samples):
    with webdataset.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def png(seed, size=(36, 40)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_webdataset_tars_with_corrupt_members_and_a_broken_shard(model_folder, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(
        shards / "data-0.tar",
        [
            {"__key__": "k0", "png": png(0), "json": json.dumps({"caption": "a cat", "url": "http://x/0"}).encode()},
            {"__key__": "k1", "jpg": b"\xff\xd8\xff corrupt", "json": b"{}"},
            {"__key__": "k2", "json": b'{"caption": "no image"}'},
            {"__key__": "k3", "png": png(3, (50, 30))},
        ],
    )
    write_tar(shards / "data-1.tar", [{"__key__": f"k{i}", "png": png(i)} for i in range(4, 7)])
    whole = write_tar(tmp_path / "whole.tar", [{"__key__": f"k{i}", "png": png(i)} for i in range(7, 10)])
    second = tarfile.open(whole).getmembers()[1]
    (shards / "data-2.tar").write_bytes(whole.read_bytes()[: second.offset_data + 100])  # cut inside its second image
    out = tmp_path / "out"
    code, stdout, err = call_main(
        capsys,
        "embed",
        model_folder,
        str(shards / "data-{0..1}.tar"),
        f"file://{shards / 'data-2.tar'}",
        "--output-dir",
        out,
        "--batch-size",
        2,
    )
    assert code == 0, err
    assert stdout.startswith(f"embedded 6 images into {out} (3 skipped") and "3 shards written" in stdout

    embeddings, metadata = read_like_embedding_reader(out)
    assert metadata.column("key").to_pylist() == ["k0", "k3", "k4", "k5", "k6", "k7"]
    assert metadata.column("image_path").to_pylist() == ["k0.png", "k3.png", "k4.png", "k5.png", "k6.png", "k7.png"]
    assert json.loads(metadata.column("json").to_pylist()[0]) == {"caption": "a cat", "url": "http://x/0"}
    skipped = {row["key"]: row["skip_reason"] for row in pq.read_table(out / "skipped").to_pylist()}
    assert skipped["k1"].startswith("cannot identify image file")
    assert skipped["k2"] == "the sample has no image file (it holds: json)"
    assert skipped[f"file://{shards / 'data-2.tar'}"].startswith("the tar shard is broken: ")

    pictures = [Image.open(io.BytesIO(data)) for data in (png(0), png(3, (50, 30)), png(4), png(5), png(6), png(7))]
    expected = Embedder.from_folder(model_folder).embed_images(pictures, batch_size=1)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)


def test_path_lists_in_text_csv_and_parquet(model_folder, image_dir, tmp_path, capsys):
    chosen = ["c03.png", "a01.png", "sub/d01.jpg", "missing.png", "a01.png"]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "paths.txt").write_text("".join(f"{os.path.relpath(image_dir / name, lists)}\n" for name in chosen) + "\n")
    (lists / "paths.csv").write_text("id,image_path\n" + "".join(f"{i},{image_dir / name}\n" for i, name in enumerate(chosen)))
    pq.write_table(pa.table({"path": [str(image_dir / name) for name in chosen]}), lists / "paths.parquet")
    results = []
    for listing, flags in (("paths.txt", []), ("paths.csv", []), ("paths.parquet", ["--path-column", "path"])):
        output = tmp_path / f"{listing}.safetensors"
        code, out, err = call_main(capsys, "embed", model_folder, lists / listing, *flags, "-o", output, "--batch-size", 5)
        assert code == 0 and out.startswith("embedded 4 images into") and "(1 skipped)" in out, err
        assert "missing.png: [Errno 2] No such file or directory" in err
        results.append(load_file(output)["embeddings"])
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[0][1], results[0][3])  # a01.png twice
    assert_cli_error(
        call_main(capsys, "embed", model_folder, lists / "paths.parquet", "-o", tmp_path / "x.npy"),
        "embed",
        f"{lists / 'paths.parquet'} has no column 'image_path' (it has 'path'); name it with --path-column",
    )


def test_tar_headers_of_the_written_files_are_plain(model_folder, image_dir, tmp_path, capsys):
    """Every written file is complete and readable by the standard tools: numpy, pyarrow, json; the layout
    packs into a tar as it is (what people ship)."""
    out = tmp_path / "out"
    assert call_main(capsys, "embed", model_folder, image_dir, "--output-dir", out, "--shard-size", 10)[0] == 0
    with tarfile.open(tmp_path / "packed.tar", "w") as archive:
        archive.add(out, arcname="out")
    names = tarfile.open(tmp_path / "packed.tar").getnames()
    assert "out/manifest.json" in names and "out/img_emb/img_emb_0.npy" in names
    assert not [name for name in names if "/." in name]  # no staging or lock file left
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_shards"] == 3 and manifest["inputs"]["count"] == 23 and manifest["options"]["shard_size"] == 10
