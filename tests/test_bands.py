import pytest

from landslide.bands import ALL_BANDS, BandLayout
from landslide.errors import DataError


def test_default_layout_is_zindi_order():
    # The official starter notebook's channel order, written out here (not derived from ALL_BANDS), so a
    # reordered constant fails: every model, cache and contract indexes channels through it.
    assert ALL_BANDS == ("red", "green", "blue", "nir",
                         "vv_desc", "vh_desc", "vv_desc_diff", "vh_desc_diff",
                         "vv_asc", "vh_asc", "vv_asc_diff", "vh_asc_diff")
    lay = BandLayout()
    assert lay.names == ALL_BANDS and lay.n_channels == 12
    assert lay.optical_idx == [0, 1, 2, 3]
    assert lay.sar_idx == list(range(4, 12))


def test_indices_follow_names_not_positions():
    lay = BandLayout(("vv_asc", "blue", "red", "vh_desc_diff"))
    assert lay.optical_idx == [2, 1]  # red, blue in canonical optical order
    assert lay.sar_idx == [3, 0]      # vh_desc_diff precedes vv_asc canonically


def test_optical_only_has_no_sar(tmp_path):
    (tmp_path / "bands.txt").write_text("red\ngreen\nblue\n")
    lay = BandLayout.from_dir(tmp_path)
    assert lay.names == ("red", "green", "blue") and lay.sar_idx == []


def test_bands_file_skips_comments_blank_lines_bom_and_crlf(tmp_path):
    (tmp_path / "bands.txt").write_bytes("\ufeff# written by an export script\r\nred\r\n\r\n  nir \r\n# end\r\n".encode())
    assert BandLayout.from_dir(tmp_path).names == ("red", "nir")


def test_missing_bands_file_means_all_bands(tmp_path):
    assert BandLayout.from_dir(tmp_path) == BandLayout()


@pytest.mark.parametrize("names,msg", [(("red", "swir"), "unknown band"), (("red", "red"), "twice"), ((), "no bands")])
def test_bad_layouts_raise(names, msg):
    with pytest.raises(DataError, match=msg):
        BandLayout(names)


def test_data_with_the_same_bands_in_another_order_is_refused(tmp_path):
    """Channel order is the contract: the same bands shuffled would be scored with the wrong weights."""
    from landslide.contract import check_data
    from landslide.errors import ContractError

    check_data({"bands": ["red", "green", "blue"]}, BandLayout(("red", "green", "blue")), artefact="m.onnx",
               data_dir=tmp_path)
    with pytest.raises(ContractError, match="same order") as e:
        check_data({"bands": ["red", "green", "blue"]}, BandLayout(("blue", "green", "red")), artefact="m.onnx",
                   data_dir=tmp_path)
    assert "m.onnx" in str(e.value) and "['blue', 'green', 'red']" in str(e.value)
    assert "has no bands.txt, so its patches are taken as the 12 Zindi bands" in e.value.fix
    (tmp_path / "bands.txt").write_text("blue\ngreen\nred\n")
    with pytest.raises(ContractError) as e:
        check_data({"bands": ["red", "green", "blue"]}, BandLayout.from_dir(tmp_path), artefact="m.onnx",
                   data_dir=tmp_path)
    assert f"{tmp_path / 'bands.txt'} declares the data's" in e.value.fix


def test_bands_file_error_names_the_file(tmp_path):
    (tmp_path / "bands.txt").write_text("red\nultraviolet\n")
    with pytest.raises(DataError) as e:
        BandLayout.from_dir(tmp_path)
    assert "bands.txt" in str(e.value) and "ultraviolet" in str(e.value) and "Fix:" in str(e.value)


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_an_unreadable_bands_file_is_a_data_error_naming_it(tmp_path, kind):
    path = tmp_path / "bands.txt"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"red\n\xff\xfe\x00green\n")  # Latin-1 / UTF-16 debris: not UTF-8
    with pytest.raises(DataError) as e:
        BandLayout.from_dir(tmp_path)
    assert e.value.file == path and "cannot read the band list" in str(e.value) and "UTF-8 text file" in e.value.fix
