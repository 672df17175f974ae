"""The contract kit: checks every strategy must pass, reusable on your own strategies.

Each check builds a small run from config overrides (the strategy's own
:attr:`~cl.strategy.Strategy.test_setup`, or :data:`DEFAULT_SETUP`) and raises
``AssertionError`` with a message when the contract is broken:

- :func:`check_trains`: training stays finite, frozen parameters stay bit-identical, the ledger
  counts what the optimizer updates and every tensor kept beyond the model's own.
- :func:`check_state_round_trip`: a fresh strategy loaded with ``state_dict()`` predicts alike.
- :func:`check_resume`: a run killed after an experience, or at a step inside one, and resumed
  from its checkpoint gives the identical accuracy matrix and losses as an uninterrupted run.
- :func:`check_strategy`: all of them on one strategy (yours), reported contract by contract.

The run-level checks use the testing hooks of :mod:`cl.run` (``CL_KILL_AFTER_EXPERIENCE`` and
``CL_KILL_AT_STEP``, here in their in-process ``:raise`` form).

Example (in a pytest file)::

    from cl.testing import check_resume, check_trains, compose, run_uninterrupted
    from cl.testing import setup_overrides

    def test_my_strategy(tmp_path):
        cfg = compose(setup_overrides("my_strategy"))
        check_trains(cfg)
        ref = run_uninterrupted(cfg, tmp_path / "ref")
        check_resume(cfg, tmp_path / "run", reference=ref, kill_step=(1, 3))
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl.budget import count_parameters, state_extra_bytes
from cl.errors import reason

# The small setup of a strategy that declares none: split_digits with the default MLP, shrunk.
DEFAULT_SETUP: tuple[str, ...] = (
    "stream.max_train_per_experience=120",
    "stream.max_test_per_experience=60",
    "stream.n_experiences=3",
    "train.epochs=1",
)
# A tiny timm ViT on the same digits.
TINY_VIT_SETUP: tuple[str, ...] = (
    *DEFAULT_SETUP,
    "model=vit",
    "model.img_size=8",
    "model.patch_size=4",
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
)
# The offline text stream (3 tasks) on the offline MiniLM encoder, few shots, short inputs.
TEXT_SETUP: tuple[str, ...] = (
    "stream=text_offline",
    "model=hf_encoder",
    "stream.max_len=16",
    "stream.k_shot=2",
    "stream.max_test_per_class=3",
    "train.epochs=1",
    "train.optimizer=adam",
)
# A tiny random Llama on the memorisation stream (text-to-text; byte-level tokens), for the
# strategies that support language models (``"text2text"`` in their ``modalities``).
LM_SETUP: tuple[str, ...] = (
    "stream=memorize",
    "model=hf_causal_lm",
    "stream.size=8",
    "stream.key_len=4",
    "stream.value_len=4",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "train.epochs=2",
    "train.batch_size=4",
    "train.optimizer=adam",
    "train.lr=0.005",
)
QUIET: tuple[str, ...] = ("logger=none", "device=cpu")


def check_reference_yaml(
    cfg: DictConfig,
    path: Path,
    reference: dict[str, Any],
    deviations: dict[str, tuple[Any, Any]],
    free: Sequence[str] = ("train.eval_batch_size",),
) -> None:
    """Check an experiment yaml that follows a named reference recipe.

    Every key the yaml at ``path`` sets must be in ``reference``, ``deviations`` (ours, the
    reference's) or ``free`` (keys results do not depend on), and the composed ``cfg`` must
    hold each reference value and each deviation's value (lists elementwise within 1e-9).
    """
    raw: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[assignment]
    assert isinstance(raw, dict)
    set_keys = {f"{g}.{k}" for g, v in raw.items() if isinstance(v, dict) for k in v}
    set_keys |= {str(k) for k, v in raw.items() if not isinstance(v, dict | list)}
    unchecked = set_keys - {*reference, *deviations, *free}
    assert not unchecked, f"{path.name} sets keys no reference entry checks: {sorted(unchecked)}"
    for key, want in {**reference, **{k: v[0] for k, v in deviations.items()}}.items():
        got: Any = OmegaConf.select(cfg, key)
        got = OmegaConf.to_object(got) if OmegaConf.is_config(got) else got
        if isinstance(want, list):
            ok = len(got) == len(want) and all(
                math.isclose(a, b, rel_tol=1e-9) if isinstance(b, float) else a == b
                for a, b in zip(got, want, strict=True)
            )
        else:
            ok = got == want
        assert ok, f"{key}: {got!r} != reference {want!r}"


def setup_overrides(name: str, *extra: str) -> list[str]:
    """Overrides of strategy ``name``'s contract setup (its ``test_setup`` or the default)."""
    from cl.strategy import get_strategy

    own = get_strategy(name).test_setup
    return [*QUIET, f"strategy={name}", *(own or DEFAULT_SETUP), *extra]


def lm_setup_overrides(name: str, *extra: str) -> list[str]:
    """Overrides of strategy ``name`` on :data:`LM_SETUP` (a tiny causal LM)."""
    return [*QUIET, f"strategy={name}", *LM_SETUP, *extra]


def compose(overrides: Sequence[str]) -> DictConfig:
    """The run config of ``overrides``, composed in-process as ``cl-run`` would."""
    from cl.config import compose_config

    return compose_config(list(overrides))


def ledger_floor(strategy: Any) -> int:
    """Bytes of every tensor in ``strategy.state_dict()`` beyond the model's original ones."""
    return state_extra_bytes(strategy.state_dict(), strategy.model_tensors())


def check_trains(cfg: DictConfig, *, n_experiences: int = 2) -> Any:
    """Train the first experiences in-process and check the training contracts.

    Checks: steps ran and the loss is finite; model parameters the optimizer does not update
    stay bit-identical and some trained parameter changed; ``trainable_params`` is the number of
    elements the optimizer updates; ``extra_state_bytes()`` covers every tensor of
    ``state_dict()`` beyond the model's own (:func:`ledger_floor`).

    Returns:
        The built run (``cl.config.Built``) after training.
    """
    built, failures = train_contracts(cfg, n_experiences=n_experiences)
    for msg in failures.values():  # the first failure, as it happened
        raise AssertionError(msg)
    return built


# The contracts of :func:`train_contracts`, in the order they are checked.
TRAIN_CONTRACTS = ("trains", "finite_loss", "frozen_params_frozen", "ledger_complete")


def train_contracts(cfg: DictConfig, *, n_experiences: int = 2) -> tuple[Any, dict[str, str]]:
    """Train the first experiences in-process and check each of :data:`TRAIN_CONTRACTS`.

    ``trains``: steps ran on every experience and a trained model parameter changed.
    ``finite_loss``: every experience's final loss is finite. ``frozen_params_frozen``: model
    parameters the optimizer does not update stay bit-identical. ``ledger_complete``:
    ``trainable_params`` is what the optimizer updates and ``extra_state_bytes()`` covers every
    tensor of ``state_dict()`` beyond the model's own.

    Returns:
        The built run after training, and the broken contracts (each -> the message of its
        first failure), in the order they failed.
    """
    from cl.config import build

    fail: dict[str, str] = {}

    def note(contract: str, ok: bool, msg: str) -> None:
        if not ok and contract not in fail:
            fail[contract] = msg

    built = build(cfg)
    strat = built.strategy
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    trained: set[int] = set()
    for exp in list(built.stream)[:n_experiences]:
        stats = strat.train_experience(exp)
        note("trains", stats.steps > 0, f"{strat.name}: no training step on experience {exp.index}")
        loss = stats.final_loss
        note("finite_loss", math.isfinite(loss), f"{strat.name}: loss {loss}")
        params = [p for p in strat.trainable_parameters() if p.requires_grad]
        trained |= {id(p) for p in params}
        # A strategy that freezes what it trained once the experience ends (adapters) has
        # nothing left to count here; it must still report what its optimizer updated.
        n_params = count_parameters(params)
        note(
            "ledger_complete",
            stats.trainable_params == n_params or (n_params == 0 and stats.trainable_params > 0),
            f"{strat.name}: trainable_params {stats.trainable_params} != "
            f"{n_params} elements the optimizer updates",
        )
        floor = ledger_floor(strat)
        note(
            "ledger_complete",
            strat.extra_state_bytes() >= floor,
            f"{strat.name}: extra_state_bytes {strat.extra_state_bytes()} < {floor} bytes of "
            "tensors in state_dict() beyond the model's own",
        )
    changed = False
    for n, p in strat.model.named_parameters():
        if n not in before:
            continue
        if id(p) not in trained:
            ok = torch.equal(p, before[n])
            note("frozen_params_frozen", ok, f"{strat.name}: frozen parameter {n} changed")
        elif not torch.equal(p, before[n]):
            changed = True
    in_model = any(id(p) in trained for p in strat.model.parameters())
    note("trains", changed or not in_model, f"{strat.name}: no trained model parameter changed")
    return built, fail


def check_state_round_trip(cfg: DictConfig) -> None:
    """A fresh strategy loaded with the state of a trained one predicts identically."""
    from cl.config import build

    a = build(cfg)
    a.strategy.train_experience(a.stream[0])
    b = build(cfg)
    b.strategy.load_state_dict(a.strategy.state_dict())
    test = a.stream[1].test
    x, t = test.x[:16], test.t[:16]
    a.strategy.model.eval()
    b.strategy.model.eval()
    with torch.inference_mode():
        assert torch.equal(a.strategy.predict(x, t), b.strategy.predict(x, t))
        if not a.strategy.needs_task_id_at_test:
            assert torch.equal(a.strategy.predict(x, None), b.strategy.predict(x, None))


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def random_kill_step(reference: Any, seed: int) -> tuple[int, int]:
    """A reproducible (experience, step) inside a run, drawn from ``seed``.

    Args:
        reference: Record of the uninterrupted run (its per-experience step counts).
        seed: Seed of the draw (e.g. derived from the strategy's name).

    Returns:
        The experience index and a 1-based step of it.
    """
    rng = random.Random(seed)
    i = rng.randrange(len(reference.per_experience))
    return i, rng.randint(1, int(reference.per_experience[i]["steps"]))


def run_uninterrupted(cfg: DictConfig, run_dir: Path) -> Any:
    """The reference: ``cfg`` run start to end in ``run_dir``."""
    from cl.run import run_experiment

    return run_experiment(cfg, run_dir)


def check_resume(
    cfg: DictConfig,
    run_dir: Path,
    *,
    reference: Any,
    kill_after: int | None = None,
    kill_step: tuple[int, int] | None = None,
) -> Any:
    """Kill a run (after experience ``kill_after``, or at ``kill_step`` = (experience, step)),
    resume it from its checkpoint and compare with ``reference`` (an uninterrupted run's record).

    Returns:
        The resumed run's record.
    """
    from cl.run import KILL_AFTER_ENV, KILL_AT_STEP_ENV, run_experiment

    if (kill_after is None) == (kill_step is None):
        raise ValueError("give exactly one of kill_after and kill_step")
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    if kill_after is not None:
        env, spec = KILL_AFTER_ENV, f"{kill_after}:raise"
    else:
        assert kill_step is not None
        env, spec = KILL_AT_STEP_ENV, f"{kill_step[0]}:{kill_step[1]}:raise"
    with _env(env, spec):
        try:
            run_experiment(cfg, run_dir)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError(f"the run was not killed ({env}={spec})")
    resumed = OmegaConf.merge(cfg, {"resume": str(run_dir)})
    assert isinstance(resumed, DictConfig)
    rec = run_experiment(resumed, run_dir)
    where = f"killed with {env}={spec}"
    assert rec.status == "complete", f"resumed run ({where}) is {rec.status}"
    assert rec.acc_matrix == reference.acc_matrix, (
        f"resumed run ({where}) differs: {rec.acc_matrix} != {reference.acc_matrix}"
    )
    losses = [p["final_loss"] for p in rec.per_experience]
    assert losses == [p["final_loss"] for p in reference.per_experience], where
    return rec


# Every contract :func:`check_strategy` reports, in order.
CONTRACTS = (
    *TRAIN_CONTRACTS,
    "state_round_trip",
    "resume_after_experience",
    "resume_inside_experience",
)


@dataclass
class ContractResult:
    """The outcome of one contract.

    Attributes:
        name: The contract (one of :data:`CONTRACTS`).
        passed: Whether it holds.
        detail: Why it failed (empty when it passed).
        seconds: Wall time of the check it was part of.
    """

    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ContractReport:
    """Per-contract results of :func:`check_strategy`; ``str()`` is a readable table."""

    strategy: str
    results: list[ContractResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def failures(self) -> list[ContractResult]:
        return [r for r in self.results if not r.passed]

    def __getitem__(self, contract: str) -> ContractResult:
        for r in self.results:
            if r.name == contract:
                return r
        raise KeyError(contract)

    def __str__(self) -> str:
        width = max(len(c) for c in CONTRACTS)
        lines = [f"contracts of strategy {self.strategy!r}:"]
        for r in self.results:
            mark = "PASS" if r.passed else "FAIL"
            detail = f"  {r.detail}" if r.detail else ""
            lines.append(f"  {mark}  {r.name:<{width}}  {r.seconds:6.1f} s{detail}")
        n_fail = len(self.failures())
        lines.append("all contracts hold" if not n_fail else f"{n_fail} contract(s) broken")
        return "\n".join(lines)

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` with the report when a contract is broken."""
        if not self.passed:
            raise AssertionError(str(self))


def check_strategy(
    strategy: str | type,
    *,
    setup: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    workdir: Path | str | None = None,
    resume: bool = True,
    verbose: bool = True,
) -> ContractReport:
    """Run every contract on one strategy and report each (nothing raised for a broken one).

    The contracts: it trains, its loss stays finite, frozen parameters stay bit-identical, the
    ledger is complete (:func:`train_contracts`), its state round-trips
    (:func:`check_state_round_trip`), and a run killed after an experience, or at a step inside
    one, resumes to the identical accuracy matrix (:func:`check_resume`).

    Args:
        strategy: A registered strategy class or its name.
        setup: Overrides of the small run to check on (default: the strategy's
            ``test_setup``, else :data:`DEFAULT_SETUP`: 3 small experiences of split_digits).
        extra: More overrides (e.g. ``plugins=[my_pkg.mine]`` to import the strategy, or
            ``strategy.my_param=0.5``).
        workdir: Where the resume runs write (default: a temporary folder, removed after).
        resume: Also run the two resume contracts (the slowest part).
        verbose: Print the report.

    Returns:
        The report; ``report.passed`` says whether every contract holds and
        ``report.assert_passed()`` fails a test with the whole table.

    Example::

        from cl.testing import check_strategy

        def test_my_strategy_keeps_the_contracts():
            check_strategy("mine", extra=["plugins=[my_pkg.mine]"]).assert_passed()
    """
    from cl.plugins import load_plugins, override_plugins
    from cl.strategy import get_strategy

    load_plugins(override_plugins(list(extra)))
    if isinstance(strategy, str):
        name = strategy
    else:
        name = str(getattr(strategy, "name", ""))
        if not name or get_strategy(name) is not strategy:
            raise ValueError(f"{strategy.__name__} is not registered: decorate it with "
                             "@register_strategy(name) first")  # fmt: skip
    own = get_strategy(name).test_setup
    overrides = [*QUIET, f"strategy={name}", *(setup or own or DEFAULT_SETUP), *extra]
    cfg = compose(overrides)
    report = ContractReport(strategy=name)

    def record(contracts: Sequence[str], started: float, failures: dict[str, str]) -> None:
        took = time.perf_counter() - started
        for c in contracts:
            msg = failures.get(c)
            report.results.append(ContractResult(c, msg is None, msg or "", took))

    t0 = time.perf_counter()
    try:
        _, failures = train_contracts(cfg)
    except Exception as e:
        failures = dict.fromkeys(TRAIN_CONTRACTS, _why(e))
    record(TRAIN_CONTRACTS, t0, failures)

    t0 = time.perf_counter()
    record(["state_round_trip"], t0, _failure("state_round_trip", check_state_round_trip, cfg))

    if resume:
        with contextlib.ExitStack() as stack:
            root = Path(workdir) if workdir else Path(stack.enter_context(_tempdir()))
            _resume_contracts(cfg, root, record)
    if verbose:
        print(report)
    return report


def _resume_contracts(cfg: DictConfig, root: Path, record: Any) -> None:
    """The two resume contracts, against one uninterrupted reference run."""
    names = ["resume_after_experience", "resume_inside_experience"]
    t0 = time.perf_counter()
    try:
        ref = run_uninterrupted(cfg, root / "reference")
    except Exception as e:
        record(names, t0, dict.fromkeys(names, f"the uninterrupted run failed: {_why(e)}"))
        return
    n = len(ref.acc_matrix)
    t0 = time.perf_counter()
    after = max(0, min(1, n - 2))
    record(
        names[:1],
        t0,
        _failure(names[0], check_resume, cfg, root / "kill_after", reference=ref, kill_after=after),
    )
    t0 = time.perf_counter()
    step = random_kill_step(ref, seed=zlib.crc32(str(cfg.strategy.name).encode()))
    record(
        names[1:],
        t0,
        _failure(names[1], check_resume, cfg, root / "kill_step", reference=ref, kill_step=step),
    )


def _failure(contract: str, check: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    try:
        check(*args, **kwargs)
    except Exception as e:
        return {contract: _why(e)}
    return {}


def _why(e: BaseException) -> str:
    if isinstance(e, AssertionError):
        return str(e).splitlines()[0] if str(e) else "assertion failed"
    return f"{type(e).__name__}: {reason(e)}"


@contextmanager
def _tempdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cl-contracts-") as d:
        yield d
