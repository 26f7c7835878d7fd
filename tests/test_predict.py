"""`ftune predict`: scoring files, folders and globs with a served version, locally (serving_default) or through TF
Serving's REST API, and the files it cannot score.

The slow tests score the eval images of the shared small run (conftest.small_run) with the version it pushed; the
rest need no pipeline.
"""

import base64
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import eval_split_images, ftune_cli, served_version_1

from pipeline import cli


def _image_folder(config, tmp_path):
    """Four eval images plus four files that cannot be scored; returns (folder, {name: label id})."""
    folder = tmp_path / "photos"
    folder.mkdir()
    labels = {}
    for index, (name, encoded, label) in enumerate(eval_split_images(config)[:4]):
        target = f"{index}_{os.path.basename(name)}"
        (folder / target).write_bytes(encoded)
        labels[target] = label
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)  # JPEG header, garbage
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")  # truncated PNG
    return folder, labels


@pytest.mark.slow
def test_predict_scores_files_and_reports_bad_ones(small_run, tmp_path):
    import tensorflow as tf

    config, _, _ = small_run
    folder, labels = _image_folder(config, tmp_path)
    result = ftune_cli(
        "predict",
        str(folder),
        str(tmp_path / "missing.jpg"),
        "--pipeline-root",
        config.pipeline_root,
        "--format",
        "json",
        "--top-k",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {os.path.basename(r["path"]): r for r in json.loads(result.stdout)}
    assert set(rows) == set(labels) | {"notes.txt", "empty.png", "corrupt.jpg", "cut.png", "missing.jpg"}
    assert rows["missing.jpg"]["error"] == "no such file or folder"
    assert rows["empty.png"]["error"] == "empty file"
    assert "not a JPEG, PNG, GIF or BMP" in rows["notes.txt"]["error"]
    assert rows["corrupt.jpg"]["error"].startswith("cannot be decoded") and not rows["corrupt.jpg"]["ok"]
    assert rows["cut.png"]["error"].startswith("cannot be decoded")
    # The good ones: what the served version's serving_default (TF Serving's signature) answers for each file.
    _, loaded = served_version_1(config)
    names = [n.decode() for n in loaded.class_names.numpy()]
    for name in labels:
        row = rows[name]
        assert row["ok"] and len(row["top"]) == 2
        expected = loaded.signatures["serving_default"](image_bytes=tf.constant([(folder / name).read_bytes()]))
        probabilities = expected["probabilities"].numpy()[0]
        assert row["top"][0]["class"] == names[int(np.argmax(probabilities))]
        assert abs(row["top"][0]["probability"] - float(probabilities.max())) < 1e-5
        assert abs(sum(e["probability"] for e in row["top"]) - 1.0) < 1e-4  # 2 classes, top 2
    table = ftune_cli("predict", str(folder), "--pipeline-root", config.pipeline_root, "--top-k", "1")
    assert table.returncode == 0 and "ERROR empty file" in table.stdout
    assert "4 images scored, 4 could not be read" in table.stderr


class _StandInTFServing(BaseHTTPRequestHandler):
    """Stands in for TF Serving's REST API (no TF Serving binary here): answers
    POST /v1/models/<name>[/versions/<n>]:predict from the same SavedModel, in TF Serving's row format, and with
    HTTP 400 {"error": ...} when an image does not decode, as TF Serving does."""

    loaded = None
    model_name = ""
    requests = []

    def do_POST(self):
        import tensorflow as tf

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if not re.fullmatch(rf"/v1/models/{self.model_name}(/versions/1)?:predict", self.path):
            return self._answer(404, {"error": f"Servable not found for request: {self.path}"})
        images = [base64.b64decode(instance["b64"]) for instance in body["instances"]]
        try:
            outputs = self.loaded.signatures[body["signature_name"]](image_bytes=tf.constant(images))
        except tf.errors.InvalidArgumentError as exc:
            return self._answer(400, {"error": exc.message})
        rows = [
            {
                "probabilities": outputs["probabilities"].numpy()[i].tolist(),
                "class_ids": int(outputs["class_ids"].numpy()[i]),
                "class_names": outputs["class_names"].numpy()[i].decode(),
            }
            for i in range(len(images))
        ]
        self._answer(200, {"predictions": rows})

    def _answer(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_predict_server_sends_tf_serving_rest_requests(small_run, tmp_path):
    from serving import predict, sidecars

    config, _, _ = small_run
    folder, labels = _image_folder(config, tmp_path)
    version_dir, loaded = served_version_1(config)
    _StandInTFServing.loaded, _StandInTFServing.model_name = loaded, config.push.model_name
    _StandInTFServing.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInTFServing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        files, _ = predict.expand_paths([str(folder)])
        local = predict.predict_files(files, predict.LocalPredictor(version_dir), top_k=2)
        rest = predict.predict_files(
            files, predict.RestPredictor(url, config.push.model_name, 1, sidecars.read_labels(version_dir)), top_k=2
        )
        assert (
            cli.main(["predict", str(folder / "*.jpg"), "--server", url, "--pipeline-root", config.pipeline_root]) == 0
        )
    finally:
        server.shutdown()
    assert [r["ok"] for r in rest] == [r["ok"] for r in local]
    for mine, theirs in zip(rest, local, strict=True):
        if mine["ok"]:
            assert [e["class"] for e in mine["top"]] == [e["class"] for e in theirs["top"]]
            assert np.allclose([e["probability"] for e in mine["top"]], [e["probability"] for e in theirs["top"]])
        else:
            assert mine["error"] == theirs["error"], mine["path"]
    path, body = _StandInTFServing.requests[0]
    assert path == f"/v1/models/{config.push.model_name}/versions/1:predict"
    assert body["signature_name"] == "serving_default" and set(body["instances"][0]) == {"b64"}
    assert _StandInTFServing.requests[-1][0] == f"/v1/models/{config.push.model_name}:predict"  # --server, no --version
    # The batch with the corrupt images was answered 400, then retried one image at a time.
    assert any(len(b["instances"]) > 1 for _, b in _StandInTFServing.requests)
    assert any(len(b["instances"]) == 1 for _, b in _StandInTFServing.requests)


def test_predict_without_a_served_model_is_an_error(tmp_path):
    result = ftune_cli("predict", str(tmp_path), "--pipeline-root", str(tmp_path / "root"), timeout=120)
    # Exit code 3: unusable input (pipeline/outcome.py).
    assert result.returncode == 3 and "no served model in" in result.stderr and "Traceback" not in result.stderr
