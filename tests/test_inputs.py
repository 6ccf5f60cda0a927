"Inputs of the wrong shape or kind (issue 14 item 4): converted as the learner's DataBlock would convert a file, else a one-line error saying what the learner takes."
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from torch import nn
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, ColReader, ColSplitter, Resize, Learner
from fastcam.synth import make_dicom_set, make_png_set
from fastcam.items import DicomBlock, read_dicom, ItemError
from fastcam.cli import tiny_xresnet
import fastcam.core  # Learner.cam

def _learner(path, df, block, c_in):
    db = DataBlock(blocks=(block, CategoryBlock), get_x=ColReader('file', pref=path), get_y=ColReader('label'),
                   splitter=ColSplitter('is_valid'), item_tfms=Resize(64, method='squish'))
    torch.manual_seed(0)
    return Learner(db.dataloaders(df, bs=4, num_workers=0, device='cpu'), nn.Sequential(tiny_xresnet(n_out=2, c_in=c_in)))

@pytest.fixture(scope='module')
def dcm(tmp_path_factory):
    p = tmp_path_factory.mktemp('inputs')
    df = make_dicom_set(p, n=6, seed=3, size=(70, 90))
    return p, df

@pytest.fixture(scope='module')
def rgb(dcm): return _learner(*dcm, DicomBlock(), 3)

@pytest.fixture(scope='module')
def bw(dcm): return _learner(*dcm, DicomBlock(bw=True), 1)

def _one_line(e): s = str(e); assert '\n' not in s and len(s) < 400, s; return s

def test_2d_array_on_3_channel_dicom_learner_is_the_files_map(dcm, rgb):
    f = dcm[0]/dcm[1].file[0]
    a = read_dicom(f)
    assert a.ndim == 2
    got, want = rgb.cam(a), rgb.cam(f)       # the DataBlock opens the file as grey repeated in R, G and B
    torch.testing.assert_close(got.maps, want.maps)
    assert got.orig_sizes == [a.shape]

def test_2d_array_on_imageblock_learner_is_its_rgb_image(tmp_path):
    df = make_png_set(tmp_path, n=4, seed=1, size=(50, 60))
    learn = _learner(tmp_path, df, ImageBlock, 3)
    a = np.asarray(Image.open(tmp_path/df.file[0]).convert('L'))
    torch.testing.assert_close(learn.cam(a).maps, learn.cam(Image.fromarray(a).convert('RGB')).maps)

def test_single_float_chw_tensor_is_an_image_in_0_1(rgb, bw):
    t = torch.rand(3, 50, 60, generator=torch.Generator().manual_seed(0))
    im = Image.fromarray(np.round(t.permute(1, 2, 0).numpy()*255).astype(np.uint8))   # the 8-bit image it stands for
    torch.testing.assert_close(rgb.cam(t).maps, rgb.cam(im).maps)
    torch.testing.assert_close(bw.cam(t).maps, bw.cam(im.convert('L')).maps)          # 3 channels to a 1-channel learner: grey, as PILImageBW opens RGB files
    assert rgb.cam(t).orig_sizes == [(50, 60)]

def test_normalised_float_tensor_says_to_pass_a_batch(rgb):
    with pytest.raises(ItemError) as ei: rgb.cam(torch.randn(3, 40, 40)*2)
    s = _one_line(ei.value)
    assert 'Tensor of shape [3, 40, 40]' in s and '0..1' in s and '[1, C, H, W]' in s

def test_batch_with_wrong_channels_says_what_the_model_takes(bw, rgb):
    for learn, xb, want in ((bw, torch.rand(2, 3, 64, 64), 1), (rgb, torch.rand(2, 1, 64, 64), 3)):
        with pytest.raises(ValueError) as ei: learn.cam(xb)
        s = _one_line(ei.value)
        assert f'takes {want}-channel images' in s and f'[B, {want}, H, W]' in s
    assert all(not m._forward_hooks for m in bw.model.modules())
    assert torch.is_grad_enabled()
