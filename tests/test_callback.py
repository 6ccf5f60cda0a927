"GradCAMCallback, learn.get_cams and CAMMonitor inside fastai's own loop."
import random, pytest, torch
from fastai.torch_core import set_seed
from PIL import Image
from fastai.callback.core import Callback, CancelBatchException, CancelValidException, CancelFitException
from fastai.vision.all import ImageDataLoaders, Resize, vision_learner, accuracy, ShortEpochCallback
from fastcam.callback import GradCAMCallback, CAMMonitor
from fastcam.cli import tiny_xresnet
from fastcam.core import cam
from test_safety import _hook_count, _state

@pytest.fixture
def dls7(image_folder):
    "A DataLoader set whose validation set (18 items) is not a multiple of the batch size (4)"
    return ImageDataLoaders.from_folder(image_folder, valid_pct=0.25, seed=42, item_tfms=Resize(64), bs=4, num_workers=0)

@pytest.fixture
def tiny_learn(dls7):
    torch.manual_seed(0)
    return vision_learner(dls7, tiny_xresnet, pretrained=False, metrics=accuracy)

def _valid_batch(dls):
    return torch.cat([b[0] for b in dls.valid.new(shuffle=False, drop_last=False)])

def test_cams_equal_learn_cam_in_prediction_order(tiny_learn, dls7):
    assert len(dls7.valid_ds) % 4 != 0
    cb = GradCAMCallback(target='all')
    preds, targs = tiny_learn.get_preds(cbs=cb)
    ref = cam(tiny_learn.model, _valid_batch(dls7), target='all')
    torch.testing.assert_close(cb.cams.maps, ref.maps, atol=1e-5, rtol=1e-4)
    assert cb.cams.targets.tolist() == ref.targets.tolist()
    torch.testing.assert_close(cb.cams.probs, preds, atol=1e-6, rtol=1e-5)

def test_shuffled_dl_comes_back_in_dataset_order(tiny_learn, dls7):
    dl = dls7.valid.new(shuffle=True)
    torch.manual_seed(3)
    cb = GradCAMCallback()
    preds, _ = tiny_learn.get_preds(dl=dl, cbs=cb)
    ref = cam(tiny_learn.model, _valid_batch(dls7))
    assert cb.idxs is not None and cb.idxs != sorted(cb.idxs)   # it really was shuffled
    torch.testing.assert_close(cb.cams.maps, ref.maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cb.cams.probs, preds, atol=1e-6, rtol=1e-5)
    # per-item targets are given in dataset order, too
    t = [i % 3 for i in range(len(dls7.valid_ds))]
    cb = GradCAMCallback(target=t)
    tiny_learn.get_preds(dl=dls7.valid.new(shuffle=True), cbs=cb)
    assert cb.cams.targets[:, 0].tolist() == t
    torch.testing.assert_close(cb.cams.maps, cam(tiny_learn.model, _valid_batch(dls7), target=t).maps, atol=1e-5, rtol=1e-4)

def test_predictions_unchanged_and_fastai_options(tiny_learn, dls7):
    plain = tiny_learn.get_preds(with_input=True, with_decoded=True)
    cb = GradCAMCallback()
    withcb = tiny_learn.get_preds(with_input=True, with_decoded=True, cbs=cb)
    for a, b in zip(plain, withcb): torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    raw, _ = tiny_learn.get_preds(act=lambda x: x, cbs=GradCAMCallback())
    torch.testing.assert_close(raw.softmax(1), plain[1], atol=1e-6, rtol=0)

def test_unlabelled_test_dl(tiny_learn, dls7):
    files = dls7.valid_ds.items[:5]
    res = tiny_learn.get_cams(dl=dls7.test_dl(files))
    ref = tiny_learn.cam(list(files))
    torch.testing.assert_close(res.maps, ref.maps, atol=1e-5, rtol=1e-4)

def test_fp16_maps_finite_and_close(tiny_learn, dls7):
    ref = tiny_learn.get_cams()
    tiny_learn.to_fp16()
    try: res = tiny_learn.get_cams()
    finally: tiny_learn.to_fp32()
    assert torch.isfinite(res.maps).all()
    torch.testing.assert_close(res.maps, ref.maps, atol=1e-2, rtol=1e-2)

class Boom(Callback):
    order = 50
    def __init__(self, at): self.at, self.n = at, 0
    def after_pred(self):
        self.n += 1
        if self.n == self.at: raise RuntimeError('boom from another callback')

def test_state_restored_after_get_preds_and_after_an_exception(tiny_learn):
    "The model ends as plain get_preds leaves it (fastai itself switches to eval mode), hooks and grads untouched"
    model = tiny_learn.model
    model.train(); tiny_learn.get_preds()
    plain = _state(model)
    model.train(); tiny_learn.get_preds(cbs=GradCAMCallback(target='all'))
    assert _state(model) == plain
    model.train()
    with pytest.raises(RuntimeError, match='boom'): tiny_learn.get_preds(cbs=[GradCAMCallback(), Boom(2)])
    assert _hook_count(model) == 0 and _state(model) == plain
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()

def test_does_nothing_during_fit_unless_asked(tiny_learn):
    cb = GradCAMCallback()
    tiny_learn.fit(1, 1e-3, cbs=cb)
    assert cb.results == [] and _hook_count(tiny_learn.model) == 0
    cb = GradCAMCallback(during_fit=True)
    tiny_learn.fit(1, 1e-3, cbs=cb)
    assert len(cb.cams) == len(tiny_learn.dls.valid_ds)

def _fit_history(dls, monitor=None):
    set_seed(0)
    learn = vision_learner(dls, tiny_xresnet, pretrained=False, metrics=accuracy)
    set_seed(1)
    dls.train.rng = random.Random(1)   # the DataLoader's own shuffling generator
    learn.fit(3, 1e-2, cbs=[monitor] if monitor else None)
    return [list(map(float, v)) for v in learn.recorder.values]

def test_monitor_leaves_training_unchanged_and_saves_png_and_gif(dls7, tmp_path):
    items = list(dls7.valid_ds.items[:3])
    plain = _fit_history(dls7)
    assert _fit_history(dls7) == plain   # the comparison below is meaningful: training is repeatable here
    mon = CAMMonitor(items, every=1)
    watched = _fit_history(dls7, mon)
    assert watched == plain
    assert len(mon.history) == 3 and mon.epochs == [0, 1, 2]
    png, gif = mon.save(tmp_path/'monitor.png')
    assert Image.open(png).size[0] > 100
    assert Image.open(gif).n_frames == 3
    mon2 = CAMMonitor(items, every=2)
    _fit_history(dls7, mon2)
    assert mon2.epochs == [1]

class _Raiser(Callback):
    "Raises `exc` at the `at`-th call of `where`: the model's forward (a hook on its head, after the CAM layer), before_batch or after_pred"
    order = 0
    def __init__(self, exc, at=2, where='forward'): self.exc, self.at, self.where, self.n, self.h = exc, at, where, 0, None
    def _tick(self, *args):
        self.n += 1
        if self.n == self.at: raise self.exc
    def before_batch(self):
        if self.where == 'before_batch': self._tick()       # after GradCAMCallback (order -5) opened its session
    def before_validate(self):
        if self.where == 'forward': self.h = self.model[-1].register_forward_hook(self._tick)   # after the CAM layer
    def after_pred(self):
        if self.where == 'after_pred': self._tick()
    def after_validate(self): self._remove()
    def after_fit(self): self._remove()
    def _remove(self):
        if self.h is not None: self.h.remove(); self.h = None

@pytest.fixture
def grad_guard():
    "Put grad mode back after the test, so a failure here cannot spill into later tests"
    yield
    torch.set_grad_enabled(True)

@pytest.mark.parametrize('exc,where,inner', [
    (RuntimeError('bad batch'), 'forward', False), (KeyboardInterrupt(), 'forward', False),
    (CancelBatchException(), 'before_batch', False), (CancelFitException(), 'before_batch', False), (CancelValidException(), 'forward', False),
    (RuntimeError('bad prediction'), 'after_pred', False), (RuntimeError('bad batch'), 'forward', True)])
def test_autograd_back_on_after_a_raising_get_preds(tiny_learn, grad_guard, exc, where, inner):
    "Issue 14.1: whatever stops a batch, grad mode is what it was before get_preds, and the learner trains afterwards"
    assert torch.is_grad_enabled()
    raiser = _Raiser(exc, 2, where)
    try: tiny_learn.get_preds(cbs=[GradCAMCallback(), raiser], inner=inner)
    except BaseException as e: assert e is exc, e
    assert raiser.n >= 2
    assert torch.is_grad_enabled()
    raiser._remove()
    assert _hook_count(tiny_learn.model) == 0 or inner
    _trains(tiny_learn)

def _trains(learn):
    "A short fit changes the weights (on the old code it raised 'element 0 of tensors does not require grad')"
    w = learn.model[-1][-1].weight.detach().clone()
    learn.fit(1, 1e-2, cbs=ShortEpochCallback(pct=0.1, short_valid=True))
    assert not torch.equal(w, learn.model[-1][-1].weight)

def test_autograd_back_on_after_a_bad_target_list(tiny_learn, grad_guard):
    "A per-item target list too short for the dl raises inside after_pred, before the maps are gathered"
    with pytest.raises(IndexError): tiny_learn.get_preds(cbs=GradCAMCallback(target=[0, 1]))
    assert torch.is_grad_enabled() and _hook_count(tiny_learn.model) == 0
    _trains(tiny_learn)

def test_autograd_back_on_after_a_raising_validation_in_fit(tiny_learn, grad_guard):
    "GradCAMCallback(during_fit=True): a forward that raises while it explains the validation set (fastai calls no after_fit then)"
    cb, raiser = GradCAMCallback(during_fit=True), _Raiser(RuntimeError('bad batch'))
    with pytest.raises(RuntimeError, match='bad batch'): tiny_learn.fit(1, 1e-3, cbs=[cb, raiser, ShortEpochCallback(pct=0.1)])
    raiser._remove()
    assert torch.is_grad_enabled()
    _trains(tiny_learn)
    tiny_learn.get_preds(cbs=cb)                           # the callback's next use closes what the raise left open
    assert _hook_count(tiny_learn.model) == 0
    cb2 = GradCAMCallback(during_fit=True)
    with pytest.raises(RuntimeError, match='bad batch'): tiny_learn.fit(1, 1e-3, cbs=[cb2, _Raiser(RuntimeError('bad batch')), ShortEpochCallback(pct=0.1)])
    cb2.__del__()                                          # or its garbage collection, as fastai's own HookCallback
    assert _hook_count(tiny_learn.model) == 1             # only the _Raiser's own hook, which the test left on
