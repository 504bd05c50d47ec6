"""Several hosts on one Linux machine: network namespaces on a bridge, with real engines inside.

For tests (tests/cluster), benchmarks and people (``scripts/cluster.sh up|down``); never for production.
Each host is a network namespace ``mlsc<tag>-h<i>`` with one veth into the bridge ``mlsc<tag>-br`` and
its own address 10.213.<net>.(10 + i); the bridge holds 10.213.<net>.1, so the calling process reaches
every host through it while the engines talk to each other over the bridge only. Started inside:

- NATS JetStream: one server per host (up to 3), clustered, so streams can be replicated 3 times;
- Redis Cluster: a primary (port 7000) on each of the first 3 hosts and its replica (port 7001) on the
  next host, so losing one host never loses a primary together with its replica;
- PostgreSQL on the last host (``postgres`` database, trust authentication on the subnet).

Everything lives under the tag: a run that crashed is cleaned up by the next ``start`` (or ``down``)
with the same tag, by killing the processes of its namespaces and deleting them. Needs root (or
CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ``ip`` tool; ``check_supported`` says why not when it can't.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlscale.errors import ServiceUnavailable

REDIS_PRIMARY_PORT = 7000
REDIS_REPLICA_PORT = 7001
NATS_PORT = 4222
NATS_ROUTE_PORT = 6222
POSTGRES_PORT = 5432


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def check_supported() -> str | None:
    """None when namespaces can be made here, otherwise the reason they can't (for a skip)."""
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"mlscprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def missing_engines() -> list[str]:
    """Engine binaries this machine lacks."""
    missing = [b for b in ("nats-server", "redis-server") if shutil.which(b) is None]
    if postgres_bindir() is None:
        missing.append("postgres (PostgreSQL server binaries)")
    return missing


def _wait_port(address: str, port: int, deadline: float, process: subprocess.Popen | None = None) -> None:
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(f"the server for {address}:{port} exited at start (code {process.returncode})")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((address, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"nothing listens on {address}:{port} in time")
        time.sleep(0.05)


class ClusterBusy(ServiceUnavailable):
    """Another live process runs a cluster with this tag."""


@dataclass
class Host:
    """One namespace: its name, address, veth (host side) and the engines started in it by name."""

    index: int
    namespace: str
    address: str
    veth: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)


class NetCluster:
    """``with NetCluster(hosts=4) as cluster: cluster.redis_url``: the engines above on namespace hosts.

    ``kill(host, name)`` SIGKILLs one engine, ``kill_host`` every process of a host, ``link(host, up)``
    cuts or heals a host's link (processes stay alive). ``add_host`` plugs in one more host with no
    engine (an application host: stream processors, servers) that a test may kill or cut off without
    touching the engines; ``remove_host`` takes it away again.
    """

    def __init__(
        self,
        hosts: int = 4,
        *,
        tag: str = "t",
        net: int = 0,
        nats: bool = True,
        redis: bool = True,
        postgres: bool = True,
        workdir: Path | str | None = None,
        redis_node_timeout_ms: int = 1000,
    ) -> None:
        if not 3 <= hosts <= 20:
            raise ValueError("hosts must be 3..20 (3 NATS servers, a Redis replica on another host than its primary)")
        if not tag.isalnum() or len(tag) > 4:
            raise ValueError("tag must be 1-4 letters or digits (interface names are at most 15 characters)")
        self.tag = tag
        self.prefix = f"mlsc{tag}"
        self.subnet = f"10.213.{net}"
        self.bridge = f"{self.prefix}-br"
        self.gateway = f"{self.subnet}.1"
        self.hosts = [self._host(i) for i in range(hosts)]
        self.engine_hosts = hosts  # the first hosts hold the engines; add_host appends application hosts
        self.want_nats, self.want_redis, self.want_postgres = nats, redis, postgres
        self.redis_node_timeout_ms = redis_node_timeout_ms
        self.workdir = Path(workdir) if workdir else Path(tempfile.gettempdir()) / f"mlscale-netcluster-{tag}"
        self.startup_seconds: dict[str, float] = {}
        self._lock: int | None = None

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def nats_hosts(self) -> list[Host]:
        return self.hosts[:3]

    @property
    def redis_primaries(self) -> list[Host]:
        return self.hosts[:3]

    def redis_replica_host(self, primary: int) -> Host:
        """The host of the replica of the primary on host ``primary``: the next host."""
        return self.hosts[(primary + 1) % self.engine_hosts]

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://{h.address}:{NATS_PORT}" for h in self.nats_hosts]

    @property
    def nats_url(self) -> str:
        """All servers, comma-separated (nats-py and the nats CLI take that form)."""
        return ",".join(self.nats_urls)

    @property
    def redis_url(self) -> str:
        """mlscale's URL of the Redis Cluster (the client discovers the other nodes)."""
        return f"redis+cluster://{self.hosts[0].address}:{REDIS_PRIMARY_PORT}"

    @property
    def postgres_host(self) -> Host:
        return self.hosts[self.engine_hosts - 1]

    @property
    def postgres_dsn(self) -> str:
        return f"postgresql://postgres@{self.postgres_host.address}:{POSTGRES_PORT}/postgres"

    def describe(self) -> dict:
        """Where everything is (``scripts/cluster.sh up`` prints and saves it)."""
        return {
            "hosts": {h.namespace: h.address for h in self.hosts},
            "nats": self.nats_url if self.want_nats else None,
            "redis": self.redis_url if self.want_redis else None,
            "postgres": self.postgres_dsn if self.want_postgres else None,
            "startup_seconds": self.startup_seconds,
        }

    # -- network -----------------------------------------------------------------------------------
    def _namespaces(self) -> list[str]:
        listed = _ip("netns", "list", check=False).stdout.split("\n")
        return [line.split()[0] for line in listed if line.startswith(f"{self.prefix}-h")]

    def cleanup(self) -> None:
        """Kill every process in this tag's namespaces and delete them, the veths and the bridge.

        Safe to call any time (also when nothing exists): it is how a crashed run is cleared.
        """
        for namespace in self._namespaces():
            for _ in range(50):  # bounded: pids may appear while we kill (a forking server)
                pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            _ip("netns", "del", namespace, check=False)
        for host in self.hosts:
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", self.bridge, check=False)
        for host in self.hosts:
            for process in host.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            host.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _host(self, i: int) -> Host:
        return Host(i, f"{self.prefix}-h{i}", f"{self.subnet}.{10 + i}", f"{self.prefix}-v{i}")

    def _build_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            self._plug(host)

    def _plug(self, host: Host) -> None:
        """Make ``host``'s namespace and join it to the bridge."""
        _ip("netns", "add", host.namespace)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        self.exec_ip(host, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self.exec_ip(host, "link", "set", "eth0", "up")
        self.exec_ip(host, "link", "set", "lo", "up")
        self.exec_ip(host, "route", "add", "default", "via", self.gateway)

    def add_host(self) -> Host:
        """One more host on the bridge, with no engine: where a test runs the processes it kills."""
        host = self._host(len(self.hosts))
        self.hosts.append(host)  # before plugging, so cleanup() finds its veth even if plugging fails
        self._plug(host)
        return host

    def remove_host(self, host: Host) -> None:
        """Kill every process of an added host and delete it (the engine hosts stay); newest first,
        so host numbers stay positions in ``hosts``."""
        if host.index < self.engine_hosts or host is not self.hosts[-1]:
            raise ValueError("only the newest host made by add_host can be removed")
        self.kill_host(host.index)
        _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", host.veth, check=False)
        self.hosts.remove(host)

    def exec_ip(self, host: Host, *args: str) -> None:
        _ip("netns", "exec", host.namespace, "ip", *args)

    def link(self, host: int, up: bool) -> None:
        """Take a host's link down (it is cut off, its processes live on) or bring it back up."""
        _ip("link", "set", self.hosts[host].veth, "up" if up else "down")

    # -- processes ---------------------------------------------------------------------------------
    def spawn(self, host: Host, name: str, command: Sequence[str], *, user: str | None = None) -> subprocess.Popen:
        """Start ``command`` inside ``host``'s namespace, its output in ``<workdir>/<host>-<name>.log``."""
        prefix = ["ip", "netns", "exec", host.namespace]
        if user is not None:  # setpriv execs (runuser would fork and hide the server's pid)
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        log = open(self.workdir / f"h{host.index}-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            process = subprocess.Popen(
                [*prefix, *command], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal does not reach the engines
            )  # fmt: skip
        finally:
            log.close()
        host.processes[name] = process
        return process

    def kill(self, host: int, name: str) -> None:
        """SIGKILL one engine (a crash) and wait for it to go."""
        process = self.hosts[host].processes[name]
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def kill_host(self, host: int) -> None:
        """SIGKILL every process in a host's namespace (the machine died); the namespace stays."""
        namespace = self.hosts[host].namespace
        for _ in range(50):
            pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for process in self.hosts[host].processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    # -- engines -----------------------------------------------------------------------------------
    def _start_nats(self, deadline: float) -> None:
        routes = ",".join(f"nats://{h.address}:{NATS_ROUTE_PORT}" for h in self.nats_hosts)
        for host in self.nats_hosts:
            store = self.workdir / f"nats-h{host.index}"
            store.mkdir()
            self.start_nats_server(host, routes, store)
        for host in self.nats_hosts:
            _wait_port(host.address, NATS_PORT, deadline, host.processes["nats"])
        self._wait_jetstream(deadline)

    def start_nats_server(self, host: Host, routes: str | None = None, store: Path | None = None) -> None:
        """(Re)start the NATS server of ``host`` with its old store (a restart after a crash)."""
        routes = routes or ",".join(f"nats://{h.address}:{NATS_ROUTE_PORT}" for h in self.nats_hosts)
        store = store or self.workdir / f"nats-h{host.index}"
        self.spawn(
            host, "nats",
            ["nats-server", "-a", host.address, "-p", str(NATS_PORT), "-js", "-sd", str(store),
             "-n", f"h{host.index}", "--cluster_name", self.prefix,
             "--cluster", f"nats://{host.address}:{NATS_ROUTE_PORT}", "--routes", routes],
        )  # fmt: skip

    def _wait_jetstream(self, deadline: float) -> None:
        """Until JetStream has a meta leader: an R3 stream can be created (and is, then deleted)."""
        import asyncio

        import nats

        async def probe() -> bool:
            nc = await nats.connect(self.nats_urls, connect_timeout=1, max_reconnect_attempts=0)
            try:
                js = nc.jetstream(timeout=1)
                await js.add_stream(name="mlscale_probe", subjects=["mlscale_probe.>"], num_replicas=3)
                await js.delete_stream("mlscale_probe")
                return True
            finally:
                await nc.close()

        while True:
            try:
                if asyncio.run(probe()):
                    return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"NATS JetStream cluster not ready in time: {exc}") from None
            time.sleep(0.2)

    def _redis_command(self, host: Host, port: int) -> list[str]:
        return [
            "redis-server", "--bind", host.address, "--port", str(port), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-h{host.index}-{port}.conf",
            "--cluster-node-timeout", str(self.redis_node_timeout_ms), "--cluster-announce-ip", host.address,
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
        ]  # fmt: skip

    def _start_redis(self, deadline: float) -> None:
        import redis

        replicas = [(self.redis_replica_host(p.index), p) for p in self.redis_primaries]
        for host in self.redis_primaries:
            self.spawn(host, "redis-primary", self._redis_command(host, REDIS_PRIMARY_PORT))
        for host, _ in replicas:
            self.spawn(host, "redis-replica", self._redis_command(host, REDIS_REPLICA_PORT))
        for host in self.redis_primaries:
            _wait_port(host.address, REDIS_PRIMARY_PORT, deadline, host.processes["redis-primary"])
        for host, _ in replicas:
            _wait_port(host.address, REDIS_REPLICA_PORT, deadline, host.processes["redis-replica"])
        # Slots split as redis-cli --cluster create would, without its one-second waits.
        step = 16384 // len(self.redis_primaries)
        for i, host in enumerate(self.redis_primaries):
            last = 16383 if i == len(self.redis_primaries) - 1 else (i + 1) * step - 1
            with redis.Redis(host=host.address, port=REDIS_PRIMARY_PORT, socket_timeout=2) as node:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
                if i:
                    node.execute_command("CLUSTER", "MEET", self.redis_primaries[0].address, REDIS_PRIMARY_PORT)
        first = self.redis_primaries[0].address
        for host, primary in replicas:
            with (
                redis.Redis(host=primary.address, port=REDIS_PRIMARY_PORT, socket_timeout=2) as owner,
                redis.Redis(host=host.address, port=REDIS_REPLICA_PORT, socket_timeout=2) as node,
            ):
                owner_id = owner.execute_command("CLUSTER", "MYID").decode()
                node.execute_command("CLUSTER", "MEET", first, REDIS_PRIMARY_PORT)
                # REPLICATE needs the node to know its primary first: gossip brings it in a moment.
                while owner_id.encode() not in node.execute_command("CLUSTER", "NODES", NEVER_DECODE=True):
                    if time.monotonic() > deadline:
                        raise ServiceUnavailable(f"Redis node {host.address} did not learn its primary in time")
                    time.sleep(0.05)
                node.execute_command("CLUSTER", "REPLICATE", owner_id)
        self.wait_redis_ok(deadline)

    def restart_redis(self, host: int, name: str) -> None:
        """Start a killed Redis node again with its nodes.conf: it rejoins (as a replica if it lost its slots)."""
        port = REDIS_PRIMARY_PORT if name == "redis-primary" else REDIS_REPLICA_PORT
        node = self.hosts[host]
        self.spawn(node, name, self._redis_command(node, port))
        _wait_port(node.address, port, time.monotonic() + 10, node.processes[name])

    def redis_nodes(self, host: Host | None = None) -> list[dict]:
        """CLUSTER NODES as seen by a live node: address, flags, primary id per node."""
        import redis

        candidates = [host] if host else self.hosts
        for node in candidates:
            for port in (REDIS_PRIMARY_PORT, REDIS_REPLICA_PORT):
                try:
                    with redis.Redis(host=node.address, port=port, socket_timeout=1, socket_connect_timeout=0.3) as c:
                        raw = c.execute_command("CLUSTER", "NODES", NEVER_DECODE=True).decode()
                except redis.RedisError:
                    continue
                out = []
                for line in raw.strip().splitlines():
                    parts = line.split()
                    out.append(
                        {"id": parts[0], "address": parts[1].split("@")[0], "flags": set(parts[2].split(",")),
                         "primary": parts[3] if parts[3] != "-" else None, "slots": parts[8:]}
                    )  # fmt: skip
                return out
        raise ServiceUnavailable("no Redis Cluster node answers")

    def wait_redis_ok(self, deadline: float) -> None:
        """Until every live node reports cluster_state:ok and every primary has a connected replica."""
        import redis

        while True:
            ok = True
            for host in self.hosts:
                for port, name in ((REDIS_PRIMARY_PORT, "redis-primary"), (REDIS_REPLICA_PORT, "redis-replica")):
                    process = host.processes.get(name)
                    if process is None or process.poll() is not None:
                        continue
                    try:
                        with redis.Redis(host=host.address, port=port, socket_timeout=1) as client:
                            info = client.cluster("INFO")
                            replication = client.info("replication")
                        ok &= info.get("cluster_state") == "ok"
                        if replication.get("role") == "slave":
                            ok &= replication.get("master_link_status") == "up"
                    except redis.RedisError:
                        ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable("Redis Cluster not ok in time")
            time.sleep(0.05)

    def _start_postgres(self, deadline: float) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise ServiceUnavailable("PostgreSQL server binaries not found")
        host = self.postgres_host
        data = self.workdir / "postgres"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postgres", "postgres")
        initdb = [
            "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
        ]  # fmt: skip
        done = subprocess.run(initdb, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ServiceUnavailable(f"initdb failed: {done.stderr[-500:]}")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        self.spawn(
            host, "postgres",
            [str(bindir / "postgres"), "-D", str(data), "-p", str(POSTGRES_PORT), "-k", str(data),
             "-c", f"listen_addresses={host.address}", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "shared_buffers=32MB"],
            user="postgres",
        )  # fmt: skip
        _wait_port(host.address, POSTGRES_PORT, deadline, host.processes["postgres"])
        import psycopg

        while True:  # the port opens before the database accepts sessions
            try:
                with psycopg.connect(self.postgres_dsn, connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- life cycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> NetCluster:
        reason = check_supported()
        if reason:
            raise ServiceUnavailable(reason)
        # One live run per tag: the lock is held until stop(), and released by the kernel if the process
        # dies, so what the cleanup below removes is always a crashed run's, never a live one's.
        lock = os.open(Path(tempfile.gettempdir()) / f"mlscale-netcluster-{self.tag}.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ClusterBusy(f"cluster tag {self.tag!r} is in use by another process") from None
        self._lock = lock
        try:
            self.cleanup()  # a crashed run with the same tag
        except BaseException:
            self._release()
            raise
        began = time.monotonic()
        deadline = began + timeout
        try:
            self.workdir.mkdir(parents=True)
            self.workdir.chmod(0o755)  # postgres (not root) must reach its data folder
            self._build_network()
            self.startup_seconds["network"] = round(time.monotonic() - began, 2)
            for name, wanted, step in (
                ("nats", self.want_nats, self._start_nats),
                ("redis", self.want_redis, self._start_redis),
                ("postgres", self.want_postgres, self._start_postgres),
            ):
                if wanted:
                    t0 = time.monotonic()
                    step(deadline)
                    self.startup_seconds[name] = round(time.monotonic() - t0, 2)
            self.startup_seconds["total"] = round(time.monotonic() - began, 2)
        except BaseException:
            self.cleanup()
            self._release()
            raise
        return self

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def stop(self) -> None:
        try:
            self.cleanup()
        finally:
            self._release()

    def __enter__(self) -> NetCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mlscale.testing.netcluster up|down [--hosts N] [--tag T]`` (scripts/cluster.sh)."""
    import argparse

    parser = argparse.ArgumentParser(prog="cluster.sh", description="Hosts as network namespaces, engines inside.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--tag", default="dev", help="names mlsc<tag>-*; several tags can run side by side")
    parser.add_argument("--net", type=int, default=1, help="third octet of 10.213.N.0/24")
    args = parser.parse_args(argv)
    cluster = NetCluster(args.hosts, tag=args.tag, net=args.net)
    if args.action == "down":
        cluster.cleanup()
        print(f"cluster {args.tag}: removed")
        return 0
    try:
        cluster.start()
    except ServiceUnavailable as exc:
        print(f"cluster.sh: {exc}")
        return 1
    info = cluster.describe()
    # The engines outlive this process (their own sessions); `down` finds them by the namespaces.
    (cluster.workdir / "cluster.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
