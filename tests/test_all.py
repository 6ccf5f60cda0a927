"`from fastcam.all import *` brings in the public names of every module, as a user expects."
import subprocess, sys

def test_star_import_gives_everything():
    code = "from fastcam.all import *; import fastcam.core; assert cam is fastcam.core.cam and isinstance(methods, dict); get_boxes; make_dicom_set; GradCAMCallback; evaluate_cams; Hook; print('ok')"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.strip().endswith('ok'), r.stderr[-2000:]
