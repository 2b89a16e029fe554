"""`budgetthinker serve MODEL [-- vllm serve args…]`: vLLM's own OpenAI-compatible server on a
prepared model, with the forcing processor that suits the runner vLLM will use
(`budgetthinker.patches.vllm_processor_fqcn`), so clients only add
`"vllm_xargs": {"budget": 1000, "two_stage": 1}` to `/v1/completions` or `/v1/chat/completions`
requests. Invalid `vllm_xargs` are refused by the processor's `validate_params` with HTTP 400.

We start `vllm serve` as a child process instead of importing its server: its command line stays
the documented interface (anything after `--` is passed through), and vLLM's own process and
signal handling is kept. What we add: the processor, a readable model name, logprobs of the
distribution actually sampled from (`--logprobs-mode processed_logprobs`, as `VLLMBackend`),
`--reasoning-parser deepseek_r1` when the model's chat template opens a `<think>` block (R1-style
models, so chat responses carry the thinking in `reasoning_content`), the CPU defaults our other
vLLM engines use, admission control of `vllm_xargs` (`serve_guard`: an unknown key, a `true`
budget or a budget the mode cannot honour is HTTP 400 before vLLM coerces anything), budgets from
the dialects clients already speak (`serve_budgets`: vLLM's `thinking_token_budget`, OpenAI's
`reasoning_effort` through `--reasoning-effort-budgets`, `--default-budget`; `--grace` for the
soft ending) with the applied budget and thinking/answer tokens in the response, and one line
with the URL and an example `curl` when it is ready.

Before anything starts: the spec is checked against the model's tokenizer and the port must be
free (a taken port is one line, never a "ready" for somebody else's server). Ready means *our*
child answers: it is alive, it holds the listening socket (Linux: /proc), `/health` is 200 and
`/v1/models` lists our served name. The child dies with us: it runs in its own process group,
asks the kernel for SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`, so even a SIGKILL of
`serve` stops it), and SIGTERM or SIGHUP of `serve` stop the whole group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.patches.serve_budgets import (
    BUDGETS_ENV,
    EXAMPLE_MAP,
    ServeBudgets,
    serve_budgets,
)

READY_PREFIX = "[serve] ready:"  # tests and scripts wait for this line on stdout


OWN_OPTIONS = (
    "host", "port", "ready_timeout", "default_budget", "reasoning_effort_budgets", "grace",
    "budgets_file",
)  # fmt: skip


def _own_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept remote clients")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument(
        "--ready-timeout", type=float, default=900.0, help="seconds to wait for the engine"
    )
    parser.add_argument(
        "--default-budget", type=int, metavar="N",
        help="budget of requests that name none (no vllm_xargs.budget, thinking_token_budget "
        "or mapped reasoning_effort)",
    )  # fmt: skip
    parser.add_argument(
        "--reasoning-effort-budgets", metavar="JSON",
        help=f"reasoning_effort → budget, e.g. '{EXAMPLE_MAP}'",
    )  # fmt: skip
    parser.add_argument(
        "--grace", type=int, metavar="G",
        help="soft ending for every budgeted request: after B, end thinking at the first line "
        "or sentence end, at the latest after B + G tokens (docs/spec.md §2.7)",
    )  # fmt: skip
    parser.add_argument(
        "--budgets-file", metavar="YAML",
        help="default_budget, reasoning_effort_budgets, grace in a file (options win)",
    )  # fmt: skip


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="prepared model folder, or 'default' (embedded model, 8ratio)"
    )
    _own_options(parser)
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="-- VLLM_ARGS",
        help="after `--`: passed to `vllm serve` unchanged (e.g. -- --tensor-parallel-size 2)",
    )


def split_args(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Our options may also follow MODEL; everything after `--` belongs to `vllm serve`."""
    rest = list(args.rest)
    cut = rest.index("--") if "--" in rest else len(rest)
    own, vllm_args = rest[:cut], rest[cut + 1 :]
    if own:
        parser = argparse.ArgumentParser(prog="budgetthinker serve", add_help=False)
        _own_options(parser)
        parser.set_defaults(**{k: getattr(args, k, None) for k in OWN_OPTIONS})
        parsed, unknown = parser.parse_known_args(own)
        if unknown:
            raise UserError(
                f"unknown option {unknown[0]!r} for budgetthinker serve; options for vLLM go "
                f"after `--`: budgetthinker serve {args.model} -- {' '.join(unknown)}"
            )
        args = argparse.Namespace(**{**vars(args), **vars(parsed)})
    return args, vllm_args


def run_serve(args: argparse.Namespace) -> int:
    args, vllm_args = split_args(args)
    budgets = serve_budgets(
        args.default_budget, args.reasoning_effort_budgets, args.grace, args.budgets_file
    )
    if args.port:
        check_port(args.host, args.port)  # first: before seconds of loading
    server = Server(
        args.model, host=args.host, port=args.port, vllm_args=vllm_args, budgets=budgets
    )
    # SIGTERM (a supervisor, a test) and SIGHUP (the terminal closed) must stop the engine too:
    # run the `finally` below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    server.check_port()
    server.start()
    try:
        server.wait_ready(args.ready_timeout)
        print(f"{READY_PREFIX} {server.url}", flush=True)
        print(example_curl(server), flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


def resolve_model(model: str) -> Path:
    """A prepared model folder (or the embedded one for 'default'); refuses unprepared ones."""
    from budgetthinker.preparation.models import resolve_model as resolve

    return resolve(model, prepared=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """The port must be free on `host` (bound as vLLM binds it, SO_REUSEADDR): else one
    UserError, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(
                f"port {port} on {host} is already in use ({e.strerror}): another server listens "
                "there; stop it, or choose another --port (--port 0: any free port)"
            ) from None


def listener_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP `port` (/proc/net/tcp, tcp6), or None where /proc has no
    such table (not Linux)."""
    inodes, found = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()  # sl, local address (hex ip:port), remote, state, … inode
            listening = len(fields) > 9 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if found else None


def holds_listener(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on `port` (True where it cannot be
    told: no /proc)."""
    inodes = listener_inodes(port)
    if inodes is None:
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """`preexec_fn` of the child: SIGTERM when the parent dies (Linux), even by SIGKILL."""

    def preexec() -> None:
        if not sys.platform.startswith("linux"):
            return
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: do not start at all
            os._exit(1)

    return preexec


def opens_think_block(model_dir: Path) -> bool:
    """Whether the chat template mentions `<think>` (R1 distills open the assistant turn with
    it), so chat responses should carry the thinking in `reasoning_content`."""
    templates = []
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        templates.append(str(json.loads(config.read_text()).get("chat_template") or ""))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (model_dir / name).is_file():
            templates.append((model_dir / name).read_text(errors="replace"))
    return any("<think>" in t for t in templates)


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


class Server:
    """One `vllm serve` child process on a prepared model."""

    def __init__(
        self,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        vllm_args=(),
        budgets: ServeBudgets | None = None,
    ) -> None:
        from budgetthinker.generation import require_vllm

        require_vllm()
        self.model_dir = resolve_model(model)
        from budgetthinker.control_spec import has_spec, load_spec
        from budgetthinker.preparation.loading import load_tokenizer

        load_tokenizer(self.model_dir)  # a spec that does not match it stops here, in one line
        self.budgets = budgets or ServeBudgets()
        self.budgets.check(load_spec(self.model_dir) if has_spec(self.model_dir) else None)
        self.host = host
        self.port = port or free_port(host)
        self.vllm_args = list(vllm_args)
        self.name = self.model_dir.name
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        from budgetthinker.generation import on_gpu
        from budgetthinker.patches.vllm_select import vllm_processor_fqcn

        args = self.vllm_args
        cmd = [sys.executable, "-m", "budgetthinker.patches.serve", "serve", str(self.model_dir)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if not _has_flag(args, "--logits-processors"):  # ours, and its admission control
            cmd += ["--logits-processors", vllm_processor_fqcn()]
            cmd += ["--middleware", "budgetthinker.patches.serve_guard.XargsGuard"]
        named = _flag_value(args, "--served-model-name")
        if named is None:
            cmd += ["--served-model-name", self.name]
        else:
            self.name = named
        if not _has_flag(args, "--logprobs-mode"):  # as VLLMBackend: logprobs after forcing
            cmd += ["--logprobs-mode", "processed_logprobs"]
        if not _has_flag(args, "--reasoning-parser") and opens_think_block(self.model_dir):
            cmd += ["--reasoning-parser", "deepseek_r1"]
        if not on_gpu():  # the small-machine defaults of VLLMBackend (reference/cpu_engines.md)
            for flag, value in (("--dtype", "float32"), ("--enforce-eager", None)):
                if not _has_flag(args, flag):
                    cmd += [flag] if value is None else [flag, value]
        return cmd + args

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout: our lines only
        from budgetthinker.patches.serve_guard import MODEL_ENV

        env[MODEL_ENV] = str(self.model_dir)
        env[BUDGETS_ENV] = self.budgets.to_env()
        cmd = self.command()
        print("[serve] " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
        self.process = subprocess.Popen(
            cmd, env=env, stdout=sys.stderr, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )  # fmt: skip

    def check_port(self) -> None:
        check_port(self.host, self.port)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(
                    f"vllm serve exited with status {self.process.returncode} before it was "
                    "ready; its log is above"
                )
            if self._answers():
                return
            time.sleep(1.0)
        raise UserError(
            f"vllm serve was not ready after {timeout:.0f} s; raise --ready-timeout"
        )

    def _answers(self) -> bool:
        """Our child answers: it holds the listening socket, `/health` is 200 and `/v1/models`
        lists our served name (another process on the port is never taken for ours)."""
        if not holds_listener(self.process.pid, self.port):
            return False
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                if r.status != 200:
                    return False
            with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as r:
                models = json.loads(r.read()).get("data") or []
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return False
        return any(isinstance(m, dict) and m.get("id") == self.name for m in models)

    def wait(self) -> int:
        return self.process.wait()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's process group (its engine processes too), then SIGKILL."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


def example_curl(server: Server) -> str:
    body = {
        "model": server.name,
        "prompt": "What is 17 * 23?",
        "max_tokens": 200,
        "skip_special_tokens": False,
        "vllm_xargs": {"budget": 100, "two_stage": 1},
    }
    return (
        f"[serve] try: curl {server.url}/v1/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )


def vllm_cli() -> None:
    """vLLM's own command line (`vllm serve …`), started as `python -m budgetthinker.patches.serve
    serve …`. The one difference: vllm-cpu is installed under the distribution name `vllm-cpu`
    while vLLM's CLI asks for the version of `vllm` (and fails); that lookup is answered here."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        lookup = metadata.version

        def version(name: str) -> str:
            # as vllm.platforms answers it for this build (its CPU detection reads "+cpu")
            return lookup("vllm-cpu") + "+cpu" if name == "vllm" else lookup(name)

        metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()


if __name__ == "__main__":
    vllm_cli()
