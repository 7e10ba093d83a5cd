from PIL import Image

from hypernet.data.preview import main


def test_preview_writes_a_contact_sheet(tmp_path):
    out = tmp_path / "sub" / "preview.png"
    main(["-o", str(out), "--videos", "2", "--frames", "3"])
    image = Image.open(out)
    assert image.mode == "RGB"
    # two rows (HR, LR) per video of three 96-pixel frames, plus captions
    assert image.width >= 3 * 96 and image.height >= 4 * 96
    assert not list(out.parent.glob(".*tmp"))  # written atomically, no temp file left
