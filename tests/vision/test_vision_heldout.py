"""The detector on footage it was not built with (real photographs, perspective, noise, light that
drifts and jumps, shake, H.264 and MPEG-4; see footage.py), scored through the same pipeline as
`vision run`; the same events at one feed and at several; `vision eval --clip` for a user's file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from footage import HELDOUT_PHOTOS, Footage, write_clip
from vision_helpers import wait_for

from mlscale.errors import ConfigError
from mlscale.vision.evaluate import load_labels, score_clip
from mlscale.vision.pipeline import VisionPipeline
from mlscale.vision.settings import FeedSettings, VisionSettings

# Short clips: 10 s of warm-up, the anomaly at 18 s, 30 s in all; low resolution but for the
# runner, who is a few pixels wide at 160x120 (cameras deliver more: the runner is judged on a
# downscaled 320x240 clip, as the benchmark's). Photos and seeds are from the held-out half (the
# detector was tuned on other photos).
CASES = {
    "camera_covered": ("chelsea.png", 1, (160, 120)),
    "crowd": ("china.jpg", 3, (160, 120)),
    "camera_moved": ("gravel.png", 5, (160, 120)),
    "wrong_way": ("astronaut.png", 2, (320, 240)),
    "normal": ("brick.png", 4, (160, 120)),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heldout")
    made = {}
    for kind, (photo, seed, size) in CASES.items():
        assert photo in HELDOUT_PHOTOS
        footage = Footage(photo, seed, kind, 30.0, size, anomaly_at=None if kind == "normal" else 18.0)
        labels = write_clip(folder / f"{kind}.mp4", footage, fps=10.0, codec="mpeg4" if seed % 2 else "h264")
        made[kind] = (folder / f"{kind}.mp4", labels)
    return made


@pytest.mark.parametrize("kind", ["camera_covered", "crowd", "camera_moved", "wrong_way"])
def test_an_anomaly_on_an_unseen_scene_is_found_with_its_kind_within_two_seconds(clips, kind):
    clip, labels = clips[kind]
    summary = score_clip(clip, load_labels(labels))
    (found,) = summary["detections"]
    assert found["detected_kind"] == kind, summary["events"]
    # The goal for the runner, the crowd and the covered lens (the crowd took 5.5 s once: it had
    # to triple the usual moving area, judged on a 1 s median and confirmed over 0.6 s).
    assert found["time_to_detection_s"] <= 2.0, summary["events"]
    assert summary["false_alarms"] == 0, summary["events"]
    assert summary["f1"] == 1.0 and summary["kind_accuracy"] == 1.0


def test_ordinary_walkers_on_an_unseen_scene_raise_nothing_after_the_warm_up(clips):
    clip, labels = clips["normal"]
    summary = score_clip(clip, load_labels(labels))
    assert summary["events"] == []
    assert summary["frames_judged"] >= 145  # 30 s at 5 fps: every due frame judged


def test_events_carry_clip_time_and_the_same_clip_gives_the_same_events_at_one_and_at_three_feeds(clips, tmp_path):
    clip, _ = clips["camera_covered"]

    def run(feeds: int) -> dict[str, list[tuple[str, float]]]:
        # Paced three times faster than the clip's 10 fps, as live cameras would be read.
        settings = VisionSettings(
            feeds=[FeedSettings(name=f"cam{i}", source=str(clip), fps=30.0, loop=False) for i in range(feeds)],
            events_dir=str(tmp_path / f"ev{feeds}"),
        )
        pipeline = VisionPipeline(settings)
        with pipeline:
            assert wait_for(pipeline.finished, timeout=60)
        assert all(c["dropped"] == 0 for c in pipeline.status()["cameras"])
        events: dict[str, list[tuple[str, float]]] = {f"cam{i}": [] for i in range(feeds)}
        for e in pipeline.events.read():
            events[e.camera].append((e.kind, e.clip_time))
        return events

    alone = run(1)["cam0"]
    assert [k for k, _ in alone] == ["camera_covered"]
    assert 18.0 <= alone[0][1] <= 20.5  # clip time, not wall-clock time
    for camera, events in run(3).items():
        assert events == alone, camera


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-c", "from mlscale.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_cli_eval_scores_a_users_clip_as_one_json_object(clips, tmp_path):
    clip, labels = clips["crowd"]
    result = _cli("vision", "eval", "--clip", str(clip), "--labels", str(labels), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["recall"] == 1.0 and summary["precision"] == 1.0 and summary["f1"] == 1.0
    assert summary["kind_accuracy"] == 1.0
    assert [e["kind"] for e in summary["events"]] == ["crowd"]
    assert 18.0 <= summary["events"][0]["time_s"] <= 20.5
    assert summary["detections"][0]["time_to_detection_s"] == pytest.approx(summary["events"][0]["time_s"] - 18.0)
    assert {"false_alarms", "roc_auc", "false_alarms_per_hour"} <= summary.keys()


def test_cli_eval_with_a_feeds_config_and_bad_labels_says_what_is_wrong(clips, tmp_path):
    clip, _ = clips["normal"]
    (tmp_path / "bad.json").write_text('{"anomalies": [{"kind": "crowd", "start_s": 5}]}')
    result = _cli("vision", "eval", "--clip", str(clip), "--labels", "bad.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.json" in result.stderr and "end_s" in result.stderr
    (tmp_path / "ok.json").write_text('{"anomalies": []}')
    (tmp_path / "mlscale.toml").write_text('[[vision.feeds]]\nname = "a"\n[[vision.feeds]]\nname = "b"\n')
    args = ("vision", "eval", "--clip", str(clip), "--labels", "ok.json", "--config", "mlscale.toml")
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and "--feed" in result.stderr
    result = _cli(*args, "--feed", "b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "false alarms 0" in result.stdout


def test_a_missing_labels_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_labels(tmp_path / "nope.json")


def test_an_unknown_zone_kind_is_an_error(tmp_path):
    (tmp_path / "mlscale.toml").write_text(
        '[[vision.feeds]]\nname = "a"\nzones = [{ name = "door", box = [0.1, 0.1, 0.5, 0.5], kind = "exit" }]\n'
    )
    result = _cli("vision", "run", "--config", "mlscale.toml", "--duration", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown kind 'exit'" in result.stderr


def _demo_feeds():
    import tomllib
    from pathlib import Path

    from mlscale.vision.pipeline import demo_settings

    example = Path(__file__).resolve().parents[2] / "examples" / "demo" / "mlscale.toml"
    feeds = tomllib.loads(example.read_text())["vision"]["feeds"]
    yield "examples/demo", [(f["seed"], f["scenario"]) for f in feeds]
    yield "start_vision()", [(f.seed, f.scenario) for f in demo_settings().feeds]


@pytest.mark.parametrize(("where", "feeds"), list(_demo_feeds()))
def test_the_demo_cameras_show_different_scenes_and_raise_different_events_at_different_times(where, feeds):
    from mlscale.vision.synthetic import SyntheticScene

    assert len(feeds) == 3, where
    scenes = [SyntheticScene((320, 240), seed=seed, scenario=scenario) for seed, scenario in feeds]
    firsts = []
    for scene in scenes:
        t = 0.0
        while scene.anomaly_at(t) is None:
            t += 0.5
        firsts.append((scene.anomaly_at(t).kind, scene.anomaly_at(t).start))
    assert len({kind for kind, _ in firsts}) == 3, firsts
    assert len({round(start) for _, start in firsts}) == 3, firsts
    frames = [scene.background for scene in scenes]
    assert all(abs(frames[i].astype(int) - frames[j]).mean() > 5 for i in range(3) for j in range(i + 1, 3))
