"""``python -m arrow_shm send|recv ...`` — the command line of docs/CLI.md."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional

from . import store_cli, stream_cli
from ._cli_common import PROG, check_out, open_channel, replace_when_complete
from ._cli_common import UsageError as _UsageError
from ._cli_common import listening as _listening
from ._cli_common import timeout_of as _timeout
from .channel import Channel, connect
from .listener import listen
from .errors import (
    ERR_CLOSED,
    ERR_INVALID_ARGUMENT,
    ERR_IPC_UNSUPPORTED,
    ERR_PEER_CLOSED,
    ERR_SYSCALL,
    ERR_TIMEOUT,
    ArrowShmError,
)
from .ipc import read_ipc_file_as_stream
from .message import ReceivedTable
from .seed import DEFAULT_SEED_SOCKET, SeedListener, seed_receive

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (never argparse's two-line usage)
        raise _UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _power_of_two(text: str) -> int:
    value = _positive_int(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two, got {text!r}")
    return value


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Arrow tables between processes through sealed shared memory")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("send", help="send Arrow IPC stream/file(s), one TABLE each")
    s.add_argument("--socket", dest="socket")
    s.add_argument("--listen", action="store_true")
    s.add_argument("--seed-compat", action="store_true")
    s.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--timeout-ms", type=_non_negative_int)
    s.add_argument("--stream", action="store_true")
    s.add_argument("--ring-bytes", type=_power_of_two)
    s.add_argument("files", nargs="+", metavar="FILE")
    r = sub.add_parser("recv", help="receive tables; write them and/or print a summary")
    r.add_argument("--socket", dest="socket")
    r.add_argument("--connect", action="store_true")
    r.add_argument("--count", type=_positive_int, default=1)
    r.add_argument("--out")
    r.add_argument("--print", action="store_true")
    r.add_argument("--seed-compat", action="store_true")
    r.add_argument("--allow-unsealed", action="store_true")
    r.add_argument("--timeout-ms", type=_non_negative_int)
    r.add_argument("--stream", action="store_true")
    p = sub.add_parser("pub", help="publish every batch of FILE(s) as one stream to subscribers")
    p.add_argument("--socket", required=True)
    p.add_argument("--subscribers", type=_positive_int, default=1)
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ring-bytes", type=_power_of_two)
    p.add_argument("--timeout-ms", type=_non_negative_int)
    p.add_argument("files", nargs="+", metavar="FILE")
    b = sub.add_parser("sub", help="subscribe to a publication; write it as one IPC stream file")
    b.add_argument("--socket", required=True)
    b.add_argument("--out")
    b.add_argument("--print", action="store_true")
    b.add_argument("--timeout-ms", type=_non_negative_int)
    store_cli.add_parsers(sub, _positive_int)
    return parser


def _load(path: str) -> bytes:
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    if not data:
        raise ArrowShmError(ERR_INVALID_ARGUMENT, f"{'standard input' if path == '-' else path} is empty")
    if data.startswith(b"ARROW1"):
        return read_ipc_file_as_stream(data)
    return data  # a stream: sent byte for byte


def _meta(args: argparse.Namespace) -> Dict[str, str]:
    meta = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UsageError(f"--meta expects KEY=VALUE, got {item!r}")
        meta[key] = value
    return meta


def _check_files(files: List[str]) -> None:
    for path in files:
        if path != "-" and not os.path.isfile(path):
            raise _UsageError(f"no such file: {path}")


def _cmd_send(args: argparse.Namespace) -> int:
    meta = _meta(args)
    _check_files(args.files)
    if args.stream:
        if args.seed_compat:
            raise _UsageError("--stream and --seed-compat do not go together")
        return stream_cli.send_stream(args, meta, [_load(p) for p in args.files])
    payloads = [_load(p) for p in args.files]
    timeout = _timeout(args)
    if args.seed_compat:
        address = args.socket or DEFAULT_SEED_SOCKET
        with SeedListener(address) as lst:
            _listening(address)
            for data in payloads:
                lst.send(data, timeout=timeout)
        return 0
    if not args.socket:
        raise _UsageError("the following arguments are required: --socket")
    with open_channel(args.socket, listen_first=args.listen, timeout=timeout) as channel:
        for data in payloads:
            channel.send(data, meta or None, timeout=timeout)
    return 0


def _format_value(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _print_summary(message: ReceivedTable, index: int) -> Optional[ArrowShmError]:
    lines = [f"== table {index}: {message.ipc_length} bytes of Arrow IPC =="]
    if message.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in message.metadata.items()))
    error: Optional[ArrowShmError] = None
    try:
        table = message.table
    except ArrowShmError as e:
        error = e
    else:
        lines.append("schema: " + ", ".join(f"{f.name}: {f.type}" for f in table.schema))
        lines.append(f"rows: {table.num_rows}, columns: {table.num_columns}, batches: {len(table.to_batches())}")
        if table.num_rows:
            lines.append("first rows:")
            try:
                for row in table.slice(0, 5).to_pylist():
                    lines.append("  " + _format_value(row))
            except Exception as e:  # noqa: BLE001 - a type pyarrow cannot convert to Python
                lines.append(f"  (rows not printable: {type(e).__name__}: {e})")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return error


class _Output:
    """``--out``: checked before anything is accepted; each table is written to a temporary file
    renamed into place once complete."""

    def __init__(self, out: Optional[str], count: int) -> None:
        self.out = out
        self.as_dir = out is not None and (count > 1 or os.path.isdir(out))
        if out is not None:
            check_out(out, self.as_dir)

    def write(self, message: ReceivedTable, index: int) -> None:
        if self.out is None:
            return
        path = os.path.join(self.out, f"{index:06d}.arrows") if self.as_dir else self.out
        try:
            with replace_when_complete(path) as f:
                f.write(memoryview(message.ipc_bytes))
        except OSError as e:
            raise ArrowShmError(ERR_SYSCALL, f"cannot write {path}: {e.strerror}", errno=e.errno, syscall="write") from None


def _report_dropped(error: ArrowShmError, pid: Optional[int] = None) -> None:
    """One line on stderr for a connection recv gave up on; silent for a sender that hung up (it is
    done) and for the connections recv closes itself when it stops."""
    if error.code in (ERR_PEER_CLOSED, ERR_CLOSED):
        return
    who = f" (pid {pid})" if pid is not None and pid > 0 else ""
    sys.stderr.write(f"{PROG}: dropped a connection{who}: {error.code}: {error.message}\n")
    sys.stderr.flush()


def _cmd_recv(args: argparse.Namespace) -> int:
    if not args.socket and not args.seed_compat:
        raise _UsageError("the following arguments are required: --socket")
    if args.stream:
        if args.seed_compat or args.count != 1:
            raise _UsageError("--stream receives one stream: no --seed-compat, no --count")
        return stream_cli.recv_stream(args)
    output = _Output(args.out, args.count)
    timeout = _timeout(args)
    status = 0

    def handle(message: ReceivedTable, index: int) -> None:
        nonlocal status
        with message:
            output.write(message, index)
            if args.print:
                err = _print_summary(message, index)
                if err is not None:
                    sys.stderr.write(f"{PROG}: {err.code}: {err.message}\n")
                    if err.code != ERR_IPC_UNSUPPORTED:
                        status = 1

    if args.seed_compat:
        for i in range(args.count):
            handle(seed_receive(args.socket or DEFAULT_SEED_SOCKET, timeout=timeout), i)
        return status

    options = {"allow_unsealed": args.allow_unsealed}
    if args.connect:
        received = 0
        with connect(args.socket, timeout=timeout, **options) as channel:
            while received < args.count:
                try:
                    message = channel.receive(timeout=timeout)
                except ArrowShmError as e:
                    if e.code == ERR_PEER_CLOSED:
                        break
                    raise
                handle(message, received)
                received += 1
        if received < args.count:
            raise ArrowShmError(ERR_PEER_CLOSED, f"the peer hung up after {received} of {args.count} tables")
        return status

    # Listening: every connection is served at once, in its own thread; --count counts the tables of
    # all of them. A connection that fails (a bad frame or table, idle) is dropped alone, with one
    # line on stderr as the TypeScript CLI's (src/cli/serve.ts); the listener goes on.
    lock = threading.Lock()
    progress: Dict[str, Any] = {"received": 0, "at": time.monotonic()}
    failures: List[BaseException] = []  # handling a table failed (say, writing --out): recv stops

    def serve_connection(channel: Channel) -> None:
        while True:
            try:
                message = channel.receive()
            except ArrowShmError as e:
                _report_dropped(e, channel.peer_pid)
                return
            with lock:
                index = progress["received"]
                if index >= args.count:
                    message.close()
                    return
                try:
                    handle(message, index)
                except BaseException as e:  # noqa: BLE001 - raised by done() in the main thread
                    failures.append(e)
                    return
                progress["received"] = index + 1
                progress["at"] = time.monotonic()

    def done() -> bool:
        with lock:
            if failures:
                raise failures[0]
            if progress["received"] >= args.count:
                return True
            if timeout is not None and time.monotonic() - progress["at"] > timeout:
                received = progress["received"]
                raise ArrowShmError(ERR_TIMEOUT, f"no table arrived within {args.timeout_ms} ms ({received} of {args.count} received)")
        return False

    with listen(args.socket, on_connection_error=_report_dropped, **options) as lst:
        _listening(args.socket)
        lst.serve(serve_connection, until=done, poll_interval=0.05)
    return status


def main(argv: Optional[List[str]] = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "pub":
            _check_files(args.files)
            return stream_cli.pub(args, _meta(args), [_load(p) for p in args.files])
        if args.command == "sub":
            return stream_cli.sub(args)
        if args.command in store_cli.COMMANDS:
            return store_cli.run(args, store_cli.Parts(print_summary=_print_summary, output=_Output, load=_load, check_files=_check_files, meta=_meta))
        command: Callable[[argparse.Namespace], int] = _cmd_send if args.command == "send" else _cmd_recv
        return command(args)
    except _UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 2
    except ArrowShmError as e:
        sys.stderr.write(f"{PROG}: {e.code}: {e.message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI never prints a stack trace
        sys.stderr.write(f"{PROG}: unexpected failure: {type(e).__name__}: {e}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
