"""The seestarpy client against a CrowdSky app, both inside one network namespace.

Importing seestarpy broadcasts on the local network to find a telescope; run in a namespace that
has only loopback (``unshare -n``), the broadcast has nowhere to go and the client carries on.
Usage: ``python tests/seestarpy_session.py WORKDIR``; prints one JSON object of what happened.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking.synthetic import make_session  # noqa: E402
from tests.apps import Deployment  # noqa: E402
from tests.frames import NIGHT_1, NIGHT_2, real_frames  # noqa: E402

PASSWORD = "clear skies over the dome"


def main(workdir: Path) -> dict:
    d = Deployment(workdir / "crowdsky", {})
    d.start_app()
    try:
        return session(d, workdir)
    finally:
        d.stop_app()


def session(d: Deployment, workdir: Path) -> dict:
    from seestarpy.crowdsky import server
    d.user("seestar_owner", PASSWORD)
    server.set_base_url(d.url)
    seen = {}

    server.set_credentials("seestar_owner", "not my password")
    try:
        server.list_stacks()
        seen["wrong_password"] = "accepted"
    except RuntimeError as exc:
        seen["wrong_password"] = str(exc)
    server.set_credentials("seestar_owner", PASSWORD)

    token = server.raw_start_session()
    seen["uploads"] = [server.raw_upload_file(token, path) for path in real_frames(NIGHT_1)]
    no_date = workdir / "no_date.fit"
    make_session(workdir / "synthetic-bad", n_frames=1, seed=9)
    from astropy.io import fits
    with fits.open(workdir / "synthetic-bad" / "frame_000.fits") as hdul:
        del hdul[0].header["DATE-OBS"]
        hdul.writeto(no_date)
    try:
        server.raw_upload_file(token, no_date)
        seen["no_date_obs"] = "accepted"
    except Exception as exc:                      # the client raises on any 4xx
        seen["no_date_obs"] = f"{type(exc).__name__}: {exc}"
    seen["finalize"] = server.raw_finalize(token, scrub_location=True)
    seen["stacker"] = d.drain_queue()

    seen["stacks"] = server.list_stacks()
    seen["stacks_m94"] = server.list_stacks("M 94")
    seen["stacks_m31"] = server.list_stacks("M 31")
    downloaded = server.download_stack(seen["stacks"][0]["chunk_key"], dest=workdir / "downloads")
    with fits.open(downloaded[0]) as hdul:
        seen["download"] = {"name": downloaded[0].name, "ncombine": hdul[0].header["NCOMBINE"],
                            "sitelat": "SITELAT" in hdul[0].header}

    # A night that already has a stack is skipped, unless overwrite is asked for.
    first_key = seen["stacks"][0]["chunk_key"]
    again = make_session(workdir / "same-night", n_frames=3, seed=4)
    with fits.open(real_frames(NIGHT_1)[0]) as hdul:
        night1 = hdul[0].header
    for path in again.paths:
        with fits.open(path, mode="update") as hdul:
            for key in ("DATE-OBS", "RA", "DEC"):
                hdul[0].header[key] = night1[key]
    token = server.raw_start_session()
    for path in again.paths:
        server.raw_upload_file(token, path)
    seen["finalize_again"] = server.raw_finalize(token)
    seen["first_key"] = first_key

    # A stack made elsewhere, named the way the telescope names them, uploaded as a stack.
    made = workdir / "made.fits"
    stacked = subprocess.run([sys.executable, "stacker.py", "stack", *map(str, real_frames(NIGHT_2)[:4]),
                              "-o", str(made)], cwd=ROOT, capture_output=True, text=True)
    assert stacked.returncode == 0, stacked.stderr
    telescope_name = workdir / "CrowdSky_4_M 94_10.0s_IRCUT_20250409.83_HP033810.fit"
    shutil.copy(made, telescope_name)
    seen["upload_stack"] = server.upload_stack(telescope_name, n_frames_input=5, n_frames_aligned=4)
    seen["stacker_import"] = d.drain_queue()
    seen["stacks_after_import"] = server.list_stacks()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), default=str))
