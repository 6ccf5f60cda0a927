"""Drive a headless Chromium from Python with nothing but the standard library: the DevTools protocol over
`--remote-debugging-pipe` (JSON messages separated by NUL bytes on file descriptors 3 and 4), no websocket client,
no Selenium. Used by tests/test_report.py (load the report, use a filter, take a screenshot) and
tools/report_shot.py (the README's picture of a report).

    with Browser() as b:
        b.open('file:///path/report.html')
        b.eval("document.title")
        b.screenshot('shot.png')
"""
import base64, fcntl, json, os, shutil, subprocess, tempfile, time
from pathlib import Path

def find_chromium():
    "The Chromium (or Chrome) executable on PATH, or None"
    for n in ('chromium', 'chromium-browser', 'google-chrome', 'chrome'):
        if p := shutil.which(n): return p
    return '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None

def _high(fd):
    "A close-on-exec duplicate of `fd` numbered 10 or more (so the child's dup2 to 3 and 4 can't clobber it)"
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new

class Browser:
    "A headless Chromium with one page, driven through the DevTools protocol over a pipe"
    def __init__(self, width:int=1400, height:int=1000, exe=None, timeout:float=60):
        self.exe,self.size,self.timeout = exe or find_chromium(),(width, height),timeout
        if not self.exe: raise FileNotFoundError("no chromium on PATH: install Debian's chromium package (apt-get install chromium)")

    def __enter__(self):
        self.tmp = tempfile.TemporaryDirectory()
        r_in,w_in = map(_high, os.pipe())     # we write commands to w_in; the browser reads them on fd 3
        r_out,w_out = map(_high, os.pipe())   # the browser writes replies and events on fd 4; we read r_out
        def child(): os.dup2(r_in, 3); os.dup2(w_out, 4)
        self.proc = subprocess.Popen([self.exe, '--headless', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe', '--no-first-run',
                                      f'--user-data-dir={self.tmp.name}', f'--window-size={self.size[0]},{self.size[1]}', 'about:blank'],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=child, close_fds=False)
        os.close(r_in); os.close(w_out)
        self.w,self.r,self.buf,self.events,self.n,self.session = os.fdopen(w_in, 'wb', 0),r_out,b'',[],0,None
        tid = self.send('Target.createTarget', url='about:blank')['targetId']
        self.session = self.send('Target.attachToTarget', targetId=tid, flatten=True)['sessionId']
        self.send('Page.enable'); self.send('Runtime.enable')
        self.send('Emulation.setDeviceMetricsOverride', width=self.size[0], height=self.size[1], deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc):
        try: self.send('Browser.close', session=False)
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.w.close(); os.close(self.r); self.tmp.cleanup()

    def _read(self, deadline):
        "The next message from the browser"
        while b'\0' not in self.buf:
            if time.time() > deadline: raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 16)
            if not chunk: raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        msg,self.buf = self.buf.split(b'\0', 1)
        return json.loads(msg)

    def send(self, method, session=True, **params):
        "Send one DevTools command (to the page's session unless `session=False`) and return its result; events seen meanwhile are kept"
        self.n += 1
        msg = dict(id=self.n, method=method, params=params)
        if session and self.session: msg['sessionId'] = self.session
        self.w.write(json.dumps(msg).encode() + b'\0')
        deadline = time.time() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get('id') == self.n:
                if 'error' in m: raise RuntimeError(f"{method}: {m['error'].get('message')}")
                return m.get('result', {})
            self.events.append(m)

    def wait_event(self, method):
        "Wait for event `method` (e.g. 'Page.loadEventFired')"
        deadline = time.time() + self.timeout
        while True:
            for k,e in enumerate(self.events):
                if e.get('method') == method: return self.events.pop(k)
            self.events.append(self._read(deadline))

    def open(self, url):
        "Load `url` and wait for its load event (images included)"
        self.events.clear()
        self.send('Page.navigate', url=str(url))
        self.wait_event('Page.loadEventFired')

    def eval(self, js):
        "The value of JavaScript expression `js` in the page (exceptions raise)"
        r = self.send('Runtime.evaluate', expression=js, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f"javascript error: {r['exceptionDetails'].get('exception', {}).get('description', r['exceptionDetails'])}")
        return r['result'].get('value')

    def key(self, key, code=None, keycode=0, text=None):
        "Press and release one key in the focused element (e.g. 'ArrowDown', 'Tab', ' ')"
        kw = dict(key=key, code=code or key, windowsVirtualKeyCode=keycode, nativeVirtualKeyCode=keycode)
        self.send('Input.dispatchKeyEvent', type='keyDown', **kw, **(dict(text=text) if text else {}))
        self.send('Input.dispatchKeyEvent', type='keyUp', **kw)

    def screenshot(self, path, full_page:bool=False):
        "Save a PNG of the viewport (or the whole page) to `path`"
        kw = dict(format='png', captureBeyondViewport=full_page)
        Path(path).write_bytes(base64.b64decode(self.send('Page.captureScreenshot', **kw)['data']))
        return Path(path)
