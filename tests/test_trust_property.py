"""Random interleavings of upload, finalize, stacking, deleting and sharing on and off by three
owners, against the real app and stacker (SQLite): after every step nothing of an owner who does
not share is reachable anonymously and no crowd or deep stack holds a stack that is not one of its
sources now; whenever the queue has run dry, every crowd stack sums exactly the current chunk
stacks of the owners sharing now, and every deep stack its owner's."""
from __future__ import annotations

import functools
import io
import shutil
import tempfile
from pathlib import Path

import requests
from astropy.io import fits
from hypothesis import HealthCheck, Phase, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lib.stacking.synthetic import make_session
from tests.test_trust import Site

NAMES = ("ursa", "vega", "wren")
FRAMES_PER_UPLOAD = 3


@functools.cache
def field() -> list[tuple[str, bytes]]:
    folder = Path(tempfile.mkdtemp(prefix="crowdsky-field-"))
    night = make_session(folder, n_frames=24, shape=(192, 256), seed=3)
    frames = [(p.name, p.read_bytes()) for p in night.paths]
    shutil.rmtree(folder, ignore_errors=True)
    return frames


class Interleavings(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="crowdsky-trust-"))
        self.site = Site(self.folder / "crowdsky", f"sqlite:///{self.folder / 'crowdsky.db'}")
        self.site.start_app()
        self.users = {name: self.site.user(name) for name in NAMES}
        self.unused = {name: list(field()) for name in NAMES}
        self.sharing = dict.fromkeys(NAMES, False)
        self.open_session = dict.fromkeys(NAMES)
        self.without_deep: dict[str, set[int]] = {name: set() for name in NAMES}   # chunk stacks left out
        self.quiet = True               # the queue has run dry since the last change

    def teardown(self):
        self.site.stop_app()
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- what owners do ----------------------------------------------------------------------

    @precondition(lambda self: any(len(v) >= FRAMES_PER_UPLOAD for v in self.unused.values()))
    @rule(who=st.sampled_from(NAMES), finalize=st.booleans())
    def upload(self, who, finalize):
        if len(self.unused[who]) < FRAMES_PER_UPLOAD:
            return
        user = self.users[who]
        session = self.open_session[who] or user.new_session()
        for name, body in self.unused[who][:FRAMES_PER_UPLOAD]:
            assert user.put_frame(session, name, body).status_code == 201
        self.unused[who] = self.unused[who][FRAMES_PER_UPLOAD:]
        self.open_session[who] = session
        if finalize:
            self.finalize(who)

    @rule(who=st.sampled_from(NAMES))
    def finalize(self, who):
        session = self.open_session[who]
        if session is None:
            return
        answer = self.users[who].post(f"/api/v1/sessions/{session}/finalize")
        assert answer.status_code == 200, answer.text
        self.open_session[who] = None
        self.quiet = False

    @rule()
    def stack_one(self):
        done = self.site.run("stacker.py", "--once")
        assert done.returncode == 0, done.stderr[-3000:]

    @rule()
    def stack_all(self):
        self.site.settle()
        self.quiet = True

    @rule(who=st.sampled_from(NAMES), on=st.booleans())
    def share(self, who, on):
        answer = self.users[who].http.patch(f"{self.site.url}/api/v1/me", json={"share_with_crowd": on})
        assert answer.status_code == 200, answer.text
        self.sharing[who] = on
        self.quiet = False

    @rule(who=st.sampled_from(NAMES), pick=st.integers(0, 10))
    def delete_chunk_stack(self, who, pick):
        own = self.own(who, "chunk")
        if not own:
            return
        stack = own[pick % len(own)]
        answer = self.users[who].http.delete(f"{self.site.url}/api/v1/stacks/{stack['id']}")
        assert answer.status_code == 200, answer.text
        self.quiet = False

    @rule(who=st.sampled_from(NAMES))
    def delete_deep_stack(self, who):
        for deep in self.own(who, "deep"):
            answer = self.users[who].http.delete(f"{self.site.url}/api/v1/stacks/{deep['id']}")
            assert answer.status_code == 200, answer.text
            self.without_deep[who] |= {s["id"] for s in self.own(who, "chunk")}
        self.quiet = False

    # --- what must hold --------------------------------------------------------------------------

    def own(self, who, kind):
        listing = self.users[who].get("/api/v1/stacks").json()["stacks"]
        return [s for s in listing if s["owner"] == who and s["kind"] == kind]

    def sources(self, stack, who: str | None = None) -> set[int]:
        """The chunk stack ids in a stack's FITS, fetched anonymously or as *who*."""
        http = self.users[who].http if who else requests
        response = http.get(self.site.url + stack["fits_url"], timeout=30)
        assert response.status_code == 200, (stack, response.text)
        with fits.open(io.BytesIO(response.content)) as hdul:
            return {int(i) for i in hdul["SOURCES"].data["ID"]}

    @invariant()
    def nothing_private_is_reachable_anonymously(self):
        listing = requests.get(self.site.url + "/api/v1/stacks", timeout=30).json()["stacks"]
        private = {name for name, on in self.sharing.items() if not on}
        assert not [s for s in listing if s["owner"] in private]
        for name in private:
            for kind in ("chunk", "deep"):
                for stack in self.own(name, kind):
                    assert requests.get(f"{self.site.url}/api/v1/stacks/{stack['id']}", timeout=30).status_code == 404
                    assert requests.get(self.site.url + stack["fits_url"], timeout=30).status_code == 404

    @invariant()
    def crowd_and_deep_stacks_hold_only_their_sources(self):
        chunk_stacks = {name: {s["id"] for s in self.own(name, "chunk")} for name in NAMES}
        shared = set().union(*(chunk_stacks[n] for n in NAMES if self.sharing[n]))
        crowd = [s for s in requests.get(self.site.url + "/api/v1/stacks", timeout=30).json()["stacks"]
                 if s["kind"] == "crowd"]
        in_crowd = set()
        for stack in crowd:
            held = self.sources(stack)
            assert held <= shared, f"crowd stack {stack['id']} holds {held - shared}, not shared now"
            detail = requests.get(f"{self.site.url}/api/v1/stacks/{stack['id']}", timeout=30).json()
            assert {c["owner"] for c in detail["contributors"]} <= {n for n in NAMES if self.sharing[n]}
            assert {s["id"] for s in detail["chunk_stacks"]} == held
            in_crowd |= held
        for name in NAMES:
            in_deep = set()
            for deep in self.own(name, "deep"):
                held = self.sources(deep, name)
                assert held <= chunk_stacks[name]
                in_deep |= held
            if self.quiet:
                assert in_deep == chunk_stacks[name] - self.without_deep[name], name
        if self.quiet:
            assert in_crowd == shared


TestInterleavings = Interleavings.TestCase
TestInterleavings.settings = settings(max_examples=3, stateful_step_count=12, deadline=None,
                                      suppress_health_check=list(HealthCheck),
                                      # shrinking replays whole runs of real processes: far too slow
                                      phases=[Phase.explicit, Phase.reuse, Phase.generate])
