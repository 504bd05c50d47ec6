"""Feeds shared by vision members through the streams membership, on the real local Redis (and
PostgreSQL for epochs): every feed owned by exactly one live member, a dead member's feeds taken
within seconds, events fenced by epoch on the shared topic."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from vision_helpers import wait_for

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.streams.broker import owner_of
from mlscale.streams.checkpoint import open_checkpoints
from mlscale.streams.connect import open_broker
from mlscale.vision.hosts import TOPIC, MemberPipeline, feed_part, fencing_spec
from mlscale.vision.settings import FeedSettings, RuleSettings, VisionSettings, ZoneSettings

SRC = Path(__file__).resolve().parents[2] / "src"
LEASE = 1.5


def _feeds(n: int) -> list[FeedSettings]:
    """Cheap cameras (160x120 at 5 fps) with rules that fire every few seconds in a normal scene:
    a restricted strip people cross, loitering after 1 s and more than one person at once."""
    return [
        FeedSettings(
            name=f"cam{i}",
            fps=5.0,
            detect_fps=5.0,
            size=(160, 120),
            seed=i,
            scenario="normal",
            zones=[ZoneSettings(name="strip", box=(0.4, 0.0, 0.6, 1.0))],
            rules=RuleSettings(loiter_seconds=1.0, max_objects=1),
        )
        for i in range(n)
    ]


@pytest.fixture
def group(redis_url):
    """A fresh group and events topic; its membership, epochs and topic are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    broker = open_broker(redis_url, partitions=1)
    try:
        broker._r.delete(f"{broker.prefix}members:{TOPIC}:{name}")
        broker.delete_topic(f"events-{name}")
    finally:
        broker.close()
    with open_checkpoints(redis_url) as store:
        store.forget(f"vision/{name}")


def _records(redis_url: str, topic: str) -> list[dict]:
    broker = open_broker(redis_url, partitions=1)
    try:
        return [json.loads(m.value) for m in broker.fetch(topic, {0: -1}, 100_000)]
    finally:
        broker.close()


def _assert_fenced(records: list[dict]) -> None:
    """In append order, a camera's epochs never go back, and each epoch is one member's."""
    last: dict[str, int] = {}
    holder: dict[tuple[str, int], str] = {}
    for r in records:
        cam, epoch = r["camera"], r["epoch"]
        assert epoch >= last.get(cam, 0), f"{cam}: event of epoch {epoch} after epoch {last[cam]} (a zombie wrote)"
        last[cam] = epoch
        assert holder.setdefault((cam, epoch), r["member"]) == r["member"], f"{cam}: two members with epoch {epoch}"


def _settings(group: str, redis_url: str, tmp_path: Path, feeds: int, **kw) -> VisionSettings:
    return VisionSettings(
        feeds=_feeds(feeds),
        events_dir=str(tmp_path / "events"),
        warmup_seconds=1.0,
        cooldown_seconds=1.0,
        membership=redis_url,
        group=group,
        lease_seconds=LEASE,
        events_topic=f"events-{group}",
        **kw,
    )


def _disjoint_cover(owned: dict[str, dict[str, int]], feeds: set[str]) -> bool:
    names = [f for m in owned.values() for f in m]
    return len(names) == len(set(names)) and set(names) == feeds


@pytest.mark.parametrize(
    "membership,fencing", [("redis", ""), ("redis", "postgresql"), ("nats", "postgresql"), ("embedded", "")]
)
def test_members_share_the_feeds_a_leaver_hands_over_at_once_and_a_joiner_takes_its_share(
    membership, fencing, group, redis_url, tmp_path, request
):
    url = {
        "redis": redis_url,
        "nats": request.getfixturevalue("nats_url") if membership == "nats" else "",
        "embedded": f"embedded:{tmp_path / 'members.db'}",  # processes of one host
    }[membership]
    store = request.getfixturevalue("postgres_dsn") if fencing else ""
    base = _settings(group, url, tmp_path, feeds=5, fencing=store)
    feeds = {f.name for f in base.feeds}
    members = {m: MemberPipeline(msgspec.structs.replace(base, member=m)) for m in ("host-1", "host-2", "host-3")}
    try:
        for p in members.values():
            p.start()
        owned = lambda: {m: p.owned() for m, p in members.items()}  # noqa: E731
        assert wait_for(lambda: _disjoint_cover(owned(), feeds), timeout=3 * LEASE), owned()
        assert wait_for(lambda: all(p.status()["members"] == sorted(members) for p in members.values()), 3 * LEASE)
        # Each member runs what rendezvous hashing over the live members gives it, nothing else.
        assert {m: set(p.owned()) for m, p in members.items()} == {
            m: {f for f in feeds if owner_of(f, sorted(members)) == m} for m in members
        }

        left = set(members["host-3"].owned())
        assert left, "pick member names so that each has a share"
        members.pop("host-3").stop()  # a clean stop leaves the group: no lease to wait for
        left_at = time.monotonic()
        assert wait_for(lambda: _disjoint_cover(owned(), feeds), timeout=2 * LEASE), owned()
        assert time.monotonic() - left_at < LEASE, "taken at the others' next heartbeat (every lease/3)"
        taken = {f for p in members.values() for f in p.owned()}
        assert left <= taken

        members["host-4"] = MemberPipeline(msgspec.structs.replace(base, member="host-4")).start()
        share = {f for f in feeds if owner_of(f, sorted(members)) == "host-4"}
        assert share - left, "pick member names so that the joiner takes a feed from a live member"
        assert wait_for(
            lambda: _disjoint_cover(owned(), feeds) and set(members["host-4"].owned()) == share, timeout=3 * LEASE
        ), owned()
        # The epochs in the store are the running owners' own: whoever lost a feed holds an older one.
        with open_checkpoints(fencing_spec(base)) as epochs:
            current = epochs.epochs(f"vision/{group}")
        assert {feed_part(f): e for p in members.values() for f, e in p.owned().items()} == {
            feed_part(f): current[feed_part(f)] for f in feeds
        }
        # Events reach the shared topic from every camera, stamped with member and epoch.
        assert wait_for(lambda: {r["camera"] for r in _records(url, base.events_topic)} == feeds, timeout=40)
        _assert_fenced(_records(url, base.events_topic))
    finally:
        for p in members.values():
            p.stop()
        if store:
            with open_checkpoints(store) as epochs:
                epochs.forget(f"vision/{group}")
        if membership == "nats":
            broker = open_broker(url, partitions=1)
            try:
                broker.delete_topic(base.events_topic)
            finally:
                broker.close()


CONFIG = """
[vision]
events_dir = "events-{member}"
warmup_seconds = 1.0
cooldown_seconds = 1.0
membership = "{url}"
group = "{group}"
member = "{member}"
lease_seconds = {lease}
events_topic = "events-{group}"
{feeds}
"""


def _feeds_toml(n: int) -> str:
    out = []
    for f in _feeds(n):
        out.append(
            f'[[vision.feeds]]\nname = "{f.name}"\nfps = 5.0\ndetect_fps = 5.0\nsize = [160, 120]\nseed = {f.seed}\n'
            'scenario = "normal"\nzones = [{name = "strip", box = [0.4, 0.0, 0.6, 1.0]}]\n'
            "rules = {loiter_seconds = 1.0, max_objects = 1}\n"
        )
    return "\n".join(out)


class _Member:
    """A `mlscale vision run --json` process; a thread keeps its latest status line."""

    def __init__(self, name: str, group: str, url: str, tmp_path: Path, feeds: int) -> None:
        self.name = name
        config = tmp_path / f"{name}.toml"
        config.write_text(CONFIG.format(url=url, group=group, member=name, lease=LEASE, feeds=_feeds_toml(feeds)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
        self.log = (tmp_path / f"{name}.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlscale", "vision", "run", "--config", str(config), "--json", "--duration", "120"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.status: dict = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.status = json.loads(line)

    def owned(self) -> dict[str, int]:
        return self.status.get("epochs", {}) if self.proc.poll() is None else {}

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def _processed_since(moment: float, members: list[_Member]) -> set[str]:
    """Cameras whose frames a live member processed after ``moment`` (wall clock), by its status line."""
    return {
        c["camera"]
        for member in members
        if member.proc.poll() is None
        for c in member.status.get("cameras", [])
        if c.get("at", 0) > moment and c.get("fps_processed", 0) > 0
    }


def test_a_killed_member_s_feeds_are_taken_within_seconds_and_a_paused_one_cannot_write(group, redis_url, tmp_path):
    n = 4
    feeds = {f"cam{i}" for i in range(n)}
    topic = f"events-{group}"
    procs = {m: _Member(m, group, redis_url, tmp_path, n) for m in ("host-1", "host-2", "host-3")}
    owned = lambda: {m: p.owned() for m, p in procs.items()}  # noqa: E731
    try:
        assert wait_for(
            lambda: (
                _disjoint_cover(owned(), feeds) and all(len(p.status.get("members", [])) == 3 for p in procs.values())
            ),
            timeout=60,  # three interpreters importing OpenCV on a busy machine
        ), owned()
        victim = max(procs, key=lambda m: len(procs[m].owned()))  # the member with the most feeds
        lost = set(procs[victim].owned())
        assert lost

        # A paused member (a zombie: alive, no heartbeat) loses its feeds; resumed, it must not publish
        # with its old epochs, and it rejoins and takes its share back.
        procs[victim].signal(signal.SIGSTOP)
        paused = time.monotonic()
        others = [m for m in procs if m != victim]
        try:
            assert wait_for(lambda: lost <= {f for m in others for f in procs[m].owned()}, timeout=4 * LEASE + 2)
            took = time.monotonic() - paused
        finally:
            procs[victim].signal(signal.SIGCONT)
        assert took < 2 * LEASE + 3.0, f"takeover took {took:.1f} s"
        assert wait_for(lambda: set(procs[victim].owned()) == lost and _disjoint_cover(owned(), feeds), timeout=30)

        # SIGKILL: its feeds move within the lease plus a heartbeat (+ the 1 s status line); every
        # camera is processed afterwards, and each camera taken over raises its events again once its
        # new owner has warmed up (the others' incidents may still be open: no new event is due).
        procs[victim].proc.send_signal(signal.SIGKILL)
        procs[victim].proc.wait(10)
        killed, killed_at = time.monotonic(), time.time()
        assert wait_for(lambda: _disjoint_cover({m: procs[m].owned() for m in others}, feeds), timeout=4 * LEASE + 2), (
            owned()
        )
        took = time.monotonic() - killed
        assert took < 2 * LEASE + 3.0, f"takeover took {took:.1f} s"
        after = lambda: {r["camera"] for r in _records(redis_url, topic) if r["time"] > killed_at}  # noqa: E731
        assert wait_for(lambda: lost <= after(), timeout=45, interval=0.5), (lost, after())
        assert wait_for(lambda: _processed_since(killed_at, [procs[m] for m in others]) == feeds, timeout=10), [
            procs[m].status.get("cameras") for m in others
        ]
        by_member = {r["member"] for r in _records(redis_url, topic) if r["time"] > killed_at + took + 1.0}
        assert victim not in by_member

        # SIGTERM: a clean stop that leaves the group, so the last member runs every feed.
        leaver, last = others
        procs[leaver].proc.send_signal(signal.SIGTERM)
        assert procs[leaver].proc.wait(30) == 0
        alone = lambda: set(procs[last].owned()) == feeds and procs[last].status["members"] == [last]  # noqa: E731
        assert wait_for(alone, timeout=3 * LEASE)
    finally:
        for p in procs.values():
            p.close()
    _assert_fenced(_records(redis_url, topic))


def test_bad_membership_settings_are_refused_with_a_clear_error(tmp_path):
    feeds = _feeds(1)
    with pytest.raises(ConfigError, match="NATS needs fencing"):
        MemberPipeline(VisionSettings(feeds=feeds, membership="nats://127.0.0.1:4222", events_dir=str(tmp_path)))
    # A store that never answers: joining is retried for the timeout, then fails naming it.
    down = MemberPipeline(VisionSettings(feeds=feeds, membership="redis://127.0.0.1:1/0", events_dir=str(tmp_path)))
    with pytest.raises(ServiceUnavailable, match=r"vision membership redis://127.0.0.1:1/0: ConnectionError"):
        down.start(timeout=1.0)
    with pytest.raises(msgspec.ValidationError, match="lease_seconds must be positive"):
        msgspec.convert({"feeds": [], "membership": "redis://x", "lease_seconds": 0}, VisionSettings)
    with pytest.raises(msgspec.ValidationError, match="do not combine"):
        msgspec.convert({"membership": "redis://x", "workers": 2}, VisionSettings)
    with pytest.raises(msgspec.ValidationError, match="events_topic needs a membership"):
        msgspec.convert({"events_topic": "ev"}, VisionSettings)
    config = tmp_path / "mlscale.toml"
    config.write_text('[vision]\nmembership = "ftp://nowhere"\n[[vision.feeds]]\nname = "cam"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    r = subprocess.run(
        [sys.executable, "-m", "mlscale", "vision", "run", "--config", str(config), "--json", "--duration", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "ftp://nowhere" in r.stderr.decode() and "Traceback" not in r.stderr.decode()


class _Cuttable:
    """The real membership broker with a switch that makes heartbeats fail, as a link that went
    down would (the member's processes stay alive: the case fencing is for)."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.cut = threading.Event()

    def heartbeat(self, *args):
        if self.cut.is_set():
            raise ServiceUnavailable("membership store unreachable (link down in the test)")
        return self.broker.heartbeat(*args)

    def __getattr__(self, name: str):
        return getattr(self.broker, name)


def test_a_cut_off_member_stops_its_feeds_when_its_lease_runs_out_and_rejoins_when_healed(group, redis_url, tmp_path):
    base = _settings(group, redis_url, tmp_path, feeds=3)
    feeds = {f.name for f in base.feeds}
    link = _Cuttable(open_broker(redis_url, partitions=1, member_ttl=LEASE))
    one = MemberPipeline(msgspec.structs.replace(base, member="host-1"), broker=link)
    two = MemberPipeline(msgspec.structs.replace(base, member="host-2"))
    topic = base.events_topic
    try:
        one.start()
        two.start()
        assert wait_for(lambda: _disjoint_cover({"1": one.owned(), "2": two.owned()}, feeds), timeout=3 * LEASE)
        share = set(one.owned())
        assert share, "pick member names so that host-1 has a share"
        assert wait_for(lambda: share <= {r["camera"] for r in _records(redis_url, topic)}, timeout=40, interval=0.5)

        link.cut.set()
        cut = time.monotonic()
        assert wait_for(lambda: not one.owned(), timeout=LEASE + 1.0)
        assert time.monotonic() - cut <= LEASE + 1.0, "the watchdog stops the feeds once the lease has run out"
        assert not one.status()["lease_valid"]
        stopped_at = time.time()
        assert wait_for(lambda: set(two.owned()) == feeds, timeout=2 * LEASE)
        assert not [r for r in _records(redis_url, topic) if r["member"] == "host-1" and r["time"] > stopped_at]

        link.cut.clear()  # healed: it rejoins and takes its share back, with newer epochs
        assert wait_for(lambda: set(one.owned()) == share and set(two.owned()) == feeds - share, timeout=3 * LEASE)
    finally:
        one.stop()
        two.stop()
    _assert_fenced(_records(redis_url, topic))


def test_a_feed_taken_over_behind_a_member_s_back_is_dropped_and_its_old_epoch_no_longer_publishes(
    group, redis_url, tmp_path
):
    base = _settings(group, redis_url, tmp_path, feeds=2)
    topic = base.events_topic
    member = MemberPipeline(msgspec.structs.replace(base, member="host-1")).start()
    try:
        assert wait_for(lambda: {r["camera"] for r in _records(redis_url, topic)} == {"cam0", "cam1"}, timeout=40)
        old = member.owned()["cam0"]
        with open_checkpoints(redis_url) as store:  # another owner takes cam0 (a split view of membership)
            newer, _, _ = store.acquire(f"vision/{group}", feed_part("cam0"))
        bumped = len(_records(redis_url, topic))
        # At its next heartbeat the member sees the epoch moved, drops cam0, and (still its
        # rendezvous owner) takes it again with an epoch newer than the usurper's.
        assert wait_for(lambda: member.owned().get("cam0", old) > newer, timeout=2 * LEASE)
        cam1 = member.owned()["cam1"]
        assert wait_for(
            lambda: sum(r["camera"] == "cam0" for r in _records(redis_url, topic)[bumped:]) >= 1, timeout=40
        )
    finally:
        member.stop()
    records = _records(redis_url, topic)
    stale = [r for r in records[bumped:] if r["camera"] == "cam0" and r["epoch"] == old]
    assert len(stale) <= 1, "at most the one event already past its check when the epoch moved"
    assert {r["epoch"] for r in records if r["camera"] == "cam1"} == {cam1}, "cam1 was never disturbed"
    _assert_fenced([r for r in records if r["epoch"] != newer])


def test_a_member_exports_its_feeds_members_and_lease_to_prometheus(group, redis_url, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    settings = msgspec.structs.replace(_settings(group, redis_url, tmp_path, feeds=2), member="host-1")
    registry = CollectorRegistry()
    with MemberPipeline(settings) as member:
        member.register_metrics(registry)
        assert wait_for(lambda: len(member.status()["cameras"]) == 2, timeout=3 * LEASE)
        text = generate_latest(registry).decode()
    assert 'mlscale_vision_member_feeds{member="host-1"} 2.0' in text
    assert 'mlscale_vision_members{member="host-1"} 1.0' in text
    assert 'mlscale_vision_member_lease_valid{member="host-1"} 1.0' in text
    assert 'mlscale_vision_member_handovers_total{member="host-1"} 0.0' in text
    assert 'mlscale_vision_input_fps{camera="cam0"}' in text and 'mlscale_vision_input_fps{camera="cam1"}' in text
