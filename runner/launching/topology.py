"""Where one node's workers stand in a job: how many per node, how many nodes, this node's rank
and node 0's address; and the node options of `gpujob run`, checked before anything starts."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from runner.errors import bad_input


@dataclass(frozen=True)
class Topology:
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # a free port is picked on a single node

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


STARTED_AT = "GPUJOB_STARTED_AT"  # the job's start (wall clock, launcher's): its workers' start-up begins there


DEFAULT_MASTER_PORT = 29500  # torchrun's, for nodes started by hand


def node_options(nnodes: str, node_rank: str, master_addr: str, master_port: str | None
                 ) -> tuple[int, int, str, int | None]:
    """`gpujob run`'s --nnodes, --node-rank, --master-addr and --master-port as (nnodes, node_rank,
    master_addr, master_port), checked before anything starts: exit 2, one line, for a value that
    cannot work. Across nodes, node 0's name must resolve, and on node 0 the port must be free (its
    rank 0 listens there for every other rank); elsewhere a wrong address or a node that never comes
    is only known at the rendezvous, which train.collective_timeout_s bounds."""

    def number(option: str, text: str, low: int, high: int, what: str) -> int:
        if not (text.strip().isdigit() and low <= int(text) <= high):
            raise bad_input(f"{option}: expected {what}, got '{text}'")
        return int(text)

    nodes = number("--nnodes", nnodes, 1, 4096, "the number of machines in the job (1 or more)")
    rank = number("--node-rank", node_rank, 0, nodes - 1,
                  f"this machine's index among --nnodes {nodes}: " + ("0" if nodes == 1 else f"0 .. {nodes - 1}"))
    port = None if master_port is None else number("--master-port", master_port, 1, 65535, "a port number, 1-65535")
    if nodes == 1:
        return nodes, rank, master_addr, port
    _check_resolves(master_addr)
    port = port or DEFAULT_MASTER_PORT
    if rank == 0:
        _check_port_free(port)
    return nodes, rank, master_addr, port


def _check_resolves(address: str) -> None:
    import socket


    try:
        socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise bad_input(f"--master-addr: '{address}' is not an address or a name this machine can resolve; "
                        "give node 0's address, reachable from every node") from None


def port_in_use(port: int) -> str:
    return (f"--master-port: port {port} is already in use on this machine, node 0, where rank 0 listens for the "
            "other ranks; stop what uses it, or give every node another --master-port")


def _check_port_free(port: int) -> None:
    try:
        taken = port_taken(port)
    except OSError as err:
        raise bad_input(f"--master-port: cannot listen on port {port} here ({err.strerror}); "
                        "give every node another --master-port") from None
    if taken:
        raise bad_input(port_in_use(port))


def port_taken(port: int) -> bool:
    """Whether something listens on `port` here. Bound as rank 0's store binds it (all addresses,
    address reuse on), so a port that a finished job left in TIME_WAIT is not taken."""
    import errno

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False
