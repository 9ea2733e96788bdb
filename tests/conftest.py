"""Shared test settings: hypothesis profiles sized for a 2-core CI machine; the checkout's compiled
hot path is left as the run found it."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pgtest import drop_profile_databases
from playwright.sync_api import expect

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("RINGFENCE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")

# Playwright's expect() polls until its condition holds or 5 s pass; on a loaded CI machine (three xdist
# workers on two cores, a server and Chromium each) a page's answer to a click can take longer than that
# (the fresh-clone full run once failed on "signer 5 started"). Waiting longer changes no verdict: a
# condition that holds passes as soon as it does, one that never holds still fails.
expect.set_options(timeout=30_000)


# ---- the order the files run in: the longest first. `make test` gives each xdist worker a whole file
# (--dist loadfile, each file's servers shared by its tests) in the order collected
# (--no-loadscope-reorder; xdist's own order, most tests first, started a 9-minute file of 11 tests
# after the quick files of many tests). A file started last that runs for minutes leaves the other
# workers idle till it ends; started first, the short files fill in around it. The order: these 42 files (the longest
# of a full run on 2026-12-07 04:48-05:45 UTC) timed again on 2026-12-07 14:50-15:18 UTC, `-n 3 --dist loadfile`, on a
# machine shared with other helpers' benchmarks and tests (load average 8-17 on 2 cores: 571 tests, 4,618 s of test
# time), the files changed since (CLI calls in-process, fewer servers) by their later runs; longest first. A stale
# entry costs time, never a verdict. The files of many PostgreSQL-parametrized tests (tests/identity/) moved back from
# the front: the earlier run's heavier load had inflated them most. To refresh:
# `pytest -n 3 --dist loadfile --no-loadscope-reorder --junitxml=r.xml`, and sum each file's test times.
LONGEST_FIRST = (
    "tests/replication/test_replication.py",
    "tests/api/test_web_wallet.py",
    "tests/backup/test_backup.py",
    "tests/api/test_btc_frost_hot.py",
    "tests/api/test_capital.py",
    "tests/api/test_mailed_links.py",
    "tests/identity/test_web.py",
    "tests/test_sim.py",
    "tests/api/test_schemathesis.py",
    "tests/replication/test_dr_drill.py",
    "tests/api/test_web_session.py",
    "tests/api/test_bench_smoke.py",
    "tests/api/test_custody_gaps.py",
    "tests/test_cli.py",
    "tests/backup/test_backup_s3.py",
    "tests/staff/test_review_live.py",
    "tests/index/test_serve_index.py",
    "tests/api/test_gateways.py",
    "tests/monitoring/test_live.py",
    "tests/api/test_capital_kyt.py",
    "tests/monitoring/test_replay_live.py",
    "tests/identity/test_accounts.py",
    "tests/api/test_halts.py",
    "tests/api/test_email_change.py",
    "tests/api/test_por_custody.py",
    "tests/derivatives/test_fapi_live.py",
    "tests/identity/test_api_keys.py",
    "tests/api/test_revoked_streams.py",
    "tests/api/test_dashboard.py",
    "tests/api/test_password_reset.py",
    "tests/journal/test_data_dir_cli.py",
    "tests/api/test_edge_headers.py",
    "tests/staff/test_console_live.py",
    "tests/api/test_rest.py",
    "tests/api/test_btc_frost_external.py",
    "tests/api/test_ccxt.py",
    "tests/api/test_password_work.py",
    "tests/api/test_edge_metrics.py",
    "tests/api/test_edge_forwarding.py",
    "tests/api/test_ed25519_keys.py",
    "tests/api/test_edge_auth.py",
    "tests/api/test_edge_numbers.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parents[1]
    gone = [f for f in LONGEST_FIRST if not (root / f).is_file()]
    if gone:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that are not there: {', '.join(gone)}")
    rank = {f: i for i, f in enumerate(LONGEST_FIRST)}
    # a stable sort: each file's tests stay together and in their order; files not named keep theirs
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _store_profile_databases():
    """RINGFENCE_TEST_PROFILE=postgresql: drop the servers' databases when the session ends."""
    yield
    drop_profile_databases()


#: variables a test may leave set for the rest of its process: the SoftHSM config (tests/keys/conftest.py's
#: session fixture; PKCS#11 reads it once per process), and pytest's own PYTEST_CURRENT_TEST
_ENV_KEPT = frozenset({"SOFTHSM2_CONF", "PYTEST_CURRENT_TEST"})


@pytest.fixture(autouse=True)
def _environment_restored():
    """A test leaves os.environ as it found it (monkeypatch's own changes are undone before this runs). A leak
    changes the next tests of the worker: Dask's LocalCluster set PYTHONHASHSEED, OMP_NUM_THREADS, ... here, and
    the test launcher then started test_launcher.py's servers with Popen (the CI run of c90be03). The leak is
    undone and the test that left it fails, naming the variables."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    leaked = {n: (before.get(n), after.get(n)) for n in sorted(set(before) | set(after))
              if before.get(n) != after.get(n) and n not in _ENV_KEPT}
    if leaked:
        for name, (old, _) in leaked.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        pytest.fail(f"the test left os.environ changed (before, after): {leaked}")


# ---- the checkout's compiled hot path is the user's build: no test may delete or rebuild it
# (`make native` builds it in place; tests/trading/test_native.py compiles, breaks and deletes only
# copies). The run fails if the build changed between its start and its end, naming the files. Checked
# in the process that runs the session (the xdist controller, or pytest itself without -n).
_TRADING = Path(__file__).resolve().parents[1] / "src" / "ringfence" / "trading"
_DERIVATIVES = _TRADING.with_name("derivatives")  # the perpetual contract's modules join the group
_LEDGER = _TRADING.with_name("ledger")  # and the ledger's postings


def _native_build_files() -> dict[str, tuple[int, int]]:
    paths = sorted(_TRADING.glob("*.so")) + sorted(_DERIVATIVES.glob("*.so")) + sorted(_LEDGER.glob("*.so")) + [_TRADING / "_native.json"]
    return {f"{p.parent.name}/{p.name}": (p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.exists()}


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_NATIVE_BUILD] = _native_build_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or _NATIVE_BUILD not in session.config.stash:
        return
    before, after = session.config.stash[_NATIVE_BUILD], _native_build_files()
    if before != after:
        changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"ERROR: the test run changed the checkout's compiled hot path in {_TRADING.parent}: {', '.join(changed)}",
                                red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_NATIVE_BUILD = pytest.StashKey[dict[str, tuple[int, int]]]()


@pytest.fixture
def use_ledger_class(monkeypatch):
    """`use_ledger_class(cls)`: every engine this test makes, new or restored from a snapshot or a
    journal, keeps its balances in a `cls` (a subclass of `Ledger`), for the rest of the test.

    How a test plants a bug in a ledger method: it overrides the method in a subclass. The compiled
    `Ledger` (ringfence/native.py) cannot be patched in place, but admits interpreted subclasses,
    and an override is what every caller reaches, compiled code included; the same in pure Python.
    """
    from ringfence.ledger import commands
    from ringfence.ledger.ledger import Ledger

    def use(cls):
        assert issubclass(cls, Ledger) and cls is not Ledger, cls
        monkeypatch.setattr(commands, "Ledger", cls)  # what the ledger module makes and restores

    return use
