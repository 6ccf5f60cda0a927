"One-line errors that name the thing and say what would work (issue 14 items 5 and 6): each is one line, names the file or parameter, and never advises pydicom's force=True."
import io, os, subprocess, sys, contextlib
import numpy as np, pandas as pd, pydicom, pydicom.data, pytest, torch
from pathlib import Path
from PIL import Image
from torch import nn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, ExplicitVRLittleEndian, generate_uid
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, Learner
from fastai.medical.imaging import PILDicom
import fastcam.items as fi
from fastcam.items import ItemError, item_error, read_dicom
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.boxes import show_boxes
from fastcam.cli import tiny_xresnet, main, weights_learner
import fastcam.core  # Learner.cam

def _one_line(msg, *names):
    s = str(msg).strip()
    assert '\n' not in s and 'force=True' not in s and '\x1b' not in s and 'Traceback' not in s, s
    for n in names: assert str(n) in s, (n, s)
    return s

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('errors')
    return root, make_dicom_set(root/'dcm', n=4, seed=5, size=(60, 70)), make_png_set(root/'png', n=4, seed=5, size=(60, 70))

def _learner(path, df, block, c_in=3):
    db = DataBlock(blocks=(block, CategoryBlock), get_x=ColReader('file', pref=path), get_y=ColReader('label'), splitter=ColSplitter('is_valid'), item_tfms=Resize(64))
    return Learner(db.dataloaders(df, bs=2, num_workers=0, device='cpu'), nn.Sequential(tiny_xresnet(n_out=2, c_in=c_in)))

def test_png_to_pildicom_learner_and_dicom_to_imageblock_learner(sets):
    root, dcm, png = sets
    f, g = root/'dcm'/dcm.file[0], root/'png'/png.file[0]
    with pytest.raises(ItemError) as ei: _learner(root/'dcm', dcm, ImageBlock(cls=PILDicom), 1).cam(g)
    assert 'PILDicom' in _one_line(ei.value, g) and 'DicomBlock' in str(ei.value)
    with pytest.raises(ItemError) as ei: _learner(root/'png', png, ImageBlock).cam(f)
    assert 'DicomBlock()' in _one_line(ei.value, f)

def test_threshold_as_percentage(sets):
    root, _, png = sets
    learn = _learner(root/'png', png, ImageBlock)
    res = learn.cam(root/'png'/png.file[0])
    with pytest.raises(ValueError) as ei: res.boxes(threshold=70)
    assert 'threshold=0.7' in _one_line(ei.value, 'threshold=70')
    assert len(res.boxes(threshold=0.7)) >= 0   # a fraction still works

def test_bad_color_names_valid_forms_even_without_boxes():
    for boxes in ([[1, 1, 5, 5]], np.zeros((0, 4))):
        with pytest.raises(ValueError) as ei: show_boxes(np.zeros((8, 8)), boxes, color='reddish')
        assert "'red'" in _one_line(ei.value, "'reddish'") and 'hex' in str(ei.value)
    with pytest.raises(ValueError) as ei: show_boxes(np.zeros((8, 8)), [[1, 1, 5, 5]], labels=['a'], color={'a': 'blu'})
    _one_line(ei.value, "'blu'")

def _cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err): rc = main(list(args))
    return rc, err.getvalue()

def test_cli_learner_and_weights_errors(tmp_path):
    (tmp_path/'in.png').write_bytes(b'')
    (tmp_path/'notes.pkl').write_text('not a pickle')
    m = weights_learner('tiny_xresnet', None, ['a', 'b'], size=64).model
    torch.save(m.state_dict(), tmp_path/'sd.pth'); torch.save(m, tmp_path/'whole.pth')
    inp = str(tmp_path/'in.png')
    rc, err = _cli('run', str(tmp_path/'notes.pkl'), inp, '--trust')
    assert rc == 2 and 'learn.export()' in _one_line(err, 'notes.pkl')
    rc, err = _cli('run', str(tmp_path/'sd.pth'), inp, '--trust')
    assert rc == 2 and '--weights' in _one_line(err, 'sd.pth', 'OrderedDict')
    rc, err = _cli('run', inp, '--weights', str(tmp_path/'whole.pth'), '--arch', 'tiny_xresnet', '--vocab', 'a,b')
    assert rc == 2 and 'state_dict()' in _one_line(err, 'whole.pth')           # torch's own advice carries escape codes
    rc, err = _cli('run', inp, '--weights', str(tmp_path/'notes.pkl'), '--arch', 'tiny_xresnet', '--vocab', 'a,b')
    assert rc == 2 and 'weights file' in _one_line(err, 'notes.pkl')
    rc, err = _cli('run', inp, '--weights', str(tmp_path/'sd.pth'), '--arch', 'tiny_xresnet', '--vocab', 'a,b,c', '--size', '64')   # 3 classes: the head differs
    assert rc == 2 and '[2, ' in _one_line(err, 'sd.pth', '3 classes', 'of another shape')
    rc, err = _cli('run', inp, '--weights', str(tmp_path/'sd.pth'), '--arch', 'xresnet18', '--vocab', 'a,b')
    assert rc == 2 and 'missing' in _one_line(err, 'sd.pth', 'xresnet18', 'unexpected')
    rc, err = _cli('run', str(tmp_path/'notes.pkl'), inp, '--threshold', '70', '--trust')
    assert rc == 2 and '--threshold=0.7' in _one_line(err, '--threshold=70')

def _cuts(raw, ds):
    "Every place a copy can stop: before, at and after each element's header and value, inside the file meta and the pixel data"
    pts = {132, 140, 150, 180, 200}
    tells = [el.value_tell for el in ds._dict.values() if getattr(el, 'value_tell', None)]   # raw elements, as read: where each value starts
    for t in tells: pts |= {t-9, t-8, t-7, t-2, t, t+1}
    pix = ds._dict[0x7FE00010].value_tell
    pts |= {pix + 10, (pix + len(raw))//2, len(raw) - 1}
    return sorted(p for p in pts if 128 < p < len(raw))

def test_truncated_dicom_at_every_point(sets, tmp_path):
    root, dcm, _ = sets
    f = root/'dcm'/dcm.file[0]
    raw, ds = f.read_bytes(), pydicom.dcmread(f)   # nothing accessed: elements stay raw, with their offsets
    cuts = _cuts(raw, ds)
    assert len(cuts) > 60
    for n in cuts:
        g = tmp_path/f'cut_{n}.dcm'; g.write_bytes(raw[:n])
        e = item_error(g)
        assert e is not None, n
        s = _one_line(e, g.name)
        assert e.kind == 'truncated' or 'cut off' in s, (n, e.kind, s)   # at an element boundary it can only say it may be cut off
        assert 'pip install' not in s

def test_no_install_hint_on_memory_error_or_size_mismatch(monkeypatch, tmp_path):
    f = tmp_path/'rgb_jpeg.dcm'
    f.write_bytes(Path(pydicom.data.get_testdata_file('SC_rgb_jpeg.dcm')).read_bytes())
    def boom(self): raise MemoryError()
    monkeypatch.setattr(pydicom.dataset.Dataset, 'pixel_array', property(boom))
    with pytest.raises(ItemError) as ei: read_dicom(f)
    assert 'memory' in _one_line(ei.value, f) and 'pip install' not in str(ei.value)
    monkeypatch.setattr(pydicom.dataset.Dataset, 'pixel_array', property(lambda self: np.zeros((3, 4), np.uint8)))
    with pytest.raises(ItemError) as ei: read_dicom(f)
    assert '3 x 4' in _one_line(ei.value, f) and 'pip install' not in str(ei.value)

def test_symlink_loop_and_broken_link(tmp_path):
    (tmp_path/'a.dcm').symlink_to(tmp_path/'b.dcm'); (tmp_path/'b.dcm').symlink_to(tmp_path/'a.dcm')
    (tmp_path/'gone.dcm').symlink_to(tmp_path/'nothere.dcm')
    assert 'symbolic link loop' in _one_line(item_error(tmp_path/'a.dcm'), 'a.dcm')
    s = _one_line(item_error(tmp_path/'gone.dcm'), 'gone.dcm', 'nothere.dcm')
    assert 'broken symbolic link' in s

def _rle_header_only(path, rows, cols):
    "A tiny RLE DICOM whose header declares `rows` x `cols` (the pixel data is a few bytes)"
    meta = FileMetaDataset(); meta.TransferSyntaxUID = RLELossless
    meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'; meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset(); ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    seg = np.array([1, 0, 0, 0, 64] + [0]*59, np.uint32).astype('<u4').tobytes() + b'\x81\x00'*4
    ds.PixelData = encapsulate([seg]); ds['PixelData'].VR = 'OB'
    ds.save_as(path, enforce_file_format=True)
    return path

def test_absurd_declared_size_is_refused_before_decoding(tmp_path, monkeypatch):
    f = _rle_header_only(tmp_path/'huge.dcm', 60000, 60000)
    assert f.stat().st_size < 2000
    e = item_error(f)
    assert e is not None and e.kind == 'unsupported'
    assert 'fastcam.items.MAX_PIXELS' in _one_line(e, 'huge.dcm', '60000 x 60000')
    with pytest.raises(ItemError, match='MAX_PIXELS'): read_dicom(f)   # refused before the decoder asks for 3.35 GiB
    g = tmp_path/'small.png'; Image.new('L', (64, 48)).save(g)
    assert item_error(g) is None
    monkeypatch.setattr(fi, 'MAX_PIXELS', 1000)                          # the limit is a setting
    assert '48 x 64' in _one_line(item_error(g), 'small.png')
    monkeypatch.setattr(fi, 'MAX_PIXELS', None)
    assert item_error(f) is None or 'MAX_PIXELS' not in str(item_error(f))
