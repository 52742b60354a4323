"""The sky map's selection counts exposure once: a deep and a crowd stack re-use their chunk
stacks' frames, so selecting all three says the chunk stack's exposure, not three times it."""
from __future__ import annotations

from playwright.sync_api import expect

from lib.stacking.synthetic import make_session
from tests.test_trust import Owner, Site, crowd_stacks


def test_the_sky_map_selection_does_not_count_a_deep_stacks_exposure_again(tmp_path, page):
    night = make_session(tmp_path / "night", n_frames=3, shape=(192, 256), seed=3)
    d = Site(tmp_path / "crowdsky", f"sqlite:///{tmp_path / 'crowdsky.db'}")
    d.start_app()
    try:
        ursa = Owner(d, "ursa", [(p.name, p.read_bytes()) for p in night.paths], share=True)
        ursa.upload()
        d.settle()
        [chunk] = ursa.stacks("chunk")
        assert len(ursa.stacks("deep")) == 1 and len(crowd_stacks(d)) == 1
        seconds = round(chunk["exposure_s"])
        assert seconds < 120                                # the map writes it in seconds then

        page.goto(d.url + "/map")
        dot = page.locator("svg.skymap circle.bin")
        expect(dot).to_have_count(1)
        at = dot.bounding_box()
        cx, cy = at["x"] + at["width"] / 2, at["y"] + at["height"] / 2
        page.mouse.move(cx - 40, cy - 30)
        page.mouse.down()
        page.mouse.move(cx + 40, cy + 30, steps=6)
        page.mouse.up()
        summary = page.locator("#sel-summary")
        expect(summary).to_contain_text("3 stacks")
        expect(summary).to_contain_text(f"{seconds} s of exposure")
    finally:
        d.stop_app()
