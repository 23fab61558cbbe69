"""Hostile code against the real service: every snippet fails with a clear error, nothing escapes.

After each snippet: no file appeared, the 127.0.0.1 listener saw no connection, the canary
environment variable of the service never showed up, the service is healthy, and the next call
sees clean state (no tampering survived).
"""

import base64
import io
import json
import os
import socket
import struct
import threading
import urllib.error
import urllib.request
import uuid
import zlib

import pytest
from PIL import Image

from executor.local import REPO_ROOT, local_service

CANARY = "canary-" + uuid.uuid4().hex
# A directory bound into the sandbox (read-only, and Landlock forbids writes anyway) and one that
# is not; attacks try to create files in both.
SANDBOX_VISIBLE_DIR = os.path.join(REPO_ROOT, "executor")
SMALL_PNG = Image.new("RGB", (32, 24), "gray")


def _png(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, "PNG")
  return buf.getvalue()


def _bomb_png(side: int) -> bytes:
  """A valid 1-bit-per-byte grayscale PNG of side x side zeros: tiny file, huge image."""
  raw = zlib.compressobj(9)
  row = b"\x00" * (side + 1)
  body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _listing(path: str) -> set[str]:
  return {name for name in os.listdir(path) if name != "__pycache__"}  # others may compile


class Listener:
  """A TCP listener on 127.0.0.1 that records every connection it gets."""

  def __init__(self):
    self.sock = socket.socket()
    self.sock.bind(("127.0.0.1", 0))
    self.sock.listen(16)
    self.sock.settimeout(0.2)
    self.port = self.sock.getsockname()[1]
    self.connections = []
    self._stop = False
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()

  def _run(self):
    while not self._stop:
      try:
        conn, addr = self.sock.accept()
      except OSError:
        continue
      self.connections.append(addr)
      conn.close()

  def close(self):
    self._stop = True
    self.thread.join()
    self.sock.close()


@pytest.fixture(scope="module")
def listener():
  lst = Listener()
  yield lst
  lst.close()


@pytest.fixture(scope="module")
def outside_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("attack-targets"))


@pytest.fixture(scope="module")
def service():
  with local_service(workers=2, env={"EXECUTOR_TEST_CANARY": CANARY}) as s:
    yield s


def execute(service, code: str, images=None, timeout_s: float = 5.0) -> dict:
  images = [_png(SMALL_PNG)] if images is None else images
  body = {
    "code": code,
    "images": [base64.b64encode(i).decode() for i in images],
    "image_index": 0,
    "timeout_s": timeout_s,
  }
  req = urllib.request.Request(
    service.url + "/v1/execute", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
  )
  with urllib.request.urlopen(req, timeout=60) as r:
    assert r.status == 200
    return json.load(r)


CLEAN_STATE_PROBE = """
import builtins, os, sys
assert not os.environ, dict(os.environ)
assert builtins.len([1, 2]) == 2 and builtins.print.__module__ == 'builtins'
assert not hasattr(builtins, 'pwned') and not hasattr(np, 'pwned') and 'pwned' not in sys.modules
assert np.zeros(3).sum() == 0 and np.array([1, 2]).tolist() == [1, 2]
assert Image.Image.rotate.__name__ == 'rotate' and Image.new('L', (2, 2)).size == (2, 2)
assert math.pi > 3.14 and cv2.flip(np.eye(2), 1)[0, 1] == 1
result = image
"""

# (group, name, code, timeout_s, accepted error types). {listen} is the listener's port,
# {visible}/{outside} the directories that must stay empty.
ATTACKS = [
  # --- escapes through the object graph, frames, tracebacks, format strings ---
  (
    "escape",
    "subclasses_to_os_system",
    """
for c in ().__class__.__base__.__subclasses__():
  if c.__name__ == '_wrap_close':
    c.__init__.__globals__['system']('touch {visible}/pwned {outside}/pwned')
raise RuntimeError('escape did not run anything')
""",
    5,
    {"SandboxViolation", "RuntimeError"},
  ),
  (
    "escape",
    "frame_walk_to_worker_globals",
    """
import sys
f = sys._getframe()
while f.f_back is not None:
  f = f.f_back
g = f.f_globals
g['os'].execv('/bin/sh', ['sh', '-c', 'touch {visible}/pwned'])
""",
    5,
    {"SandboxViolation"},
  ),
  (
    "escape",
    "traceback_frames_to_builtins_import",
    """
try:
  1 / 0
except ZeroDivisionError as e:
  tb = e.__traceback__
  imp = tb.tb_frame.f_globals['__builtins__'].__import__
  imp('subprocess').run(['touch', '{outside}/pwned'])
""",
    5,
    {"SandboxViolation"},
  ),
  (
    "escape",
    "format_string_reads_environment",
    """
leak = '{{0.__init__.__globals__[os].environ[EXECUTOR_TEST_CANARY]}}'.format(Image.Image)
print(leak)
""",
    5,
    {"KeyError"},
  ),
  (
    "escape",
    "gc_finds_worker_and_kills_parent",
    """
import gc, os, signal
workers = [o for o in gc.get_objects() if type(o).__name__ == 'Worker']
os.kill(os.getppid(), signal.SIGKILL)
""",
    5,
    {"PermissionError"},
  ),
  (
    "escape",
    "catch_warnings_module_globals",
    """
cls = [c for c in object.__subclasses__() if c.__name__ == 'catch_warnings'][0]
cls()._module.__builtins__['__import__']('os').popen('touch {outside}/pwned').read()
raise RuntimeError('popen returned')
""",
    5,
    {"SandboxViolation", "RuntimeError"},
  ),
  # --- file reads and writes through numpy, PIL, cv2 ---
  (
    "files",
    "np_load_outside",
    "np.load('{outside}/../secret.npy', allow_pickle=True)",
    5,
    {"FileNotFoundError", "PermissionError"},
  ),
  (
    "files",
    "np_fromfile_proc_environ",
    "print(np.fromfile('/proc/self/environ', dtype=np.uint8))",
    5,
    {"PermissionError"},
  ),
  (
    "files",
    "np_fromfile_repo_source",
    f"np.fromfile('{REPO_ROOT}/setup.py', dtype=np.uint8)",
    5,
    {"PermissionError", "FileNotFoundError"},
  ),
  ("files", "np_save", "np.save('{visible}/pwned.npy', np.zeros(3))", 5, {"PermissionError", "OSError"}),
  (
    "files",
    "cv2_imwrite",
    """
ok = cv2.imwrite('{visible}/pwned.png', np.zeros((4, 4), np.uint8))
assert ok, 'cv2.imwrite could not write'
""",
    5,
    {"AssertionError", "error"},
  ),
  ("files", "pil_save", "image.save('{visible}/pwned.png')", 5, {"PermissionError", "OSError"}),
  ("files", "pil_open_outside", "result = Image.open('/etc/shadow')", 5, {"PermissionError", "FileNotFoundError"}),
  ("files", "open_write_tmp", "open('/tmp/pwned', 'w').write('x')", 5, {"PermissionError", "OSError"}),
  (
    "files",
    "mkdir_and_symlink",
    "import os\nos.symlink('/', '{visible}/root-link')",
    5,
    {"PermissionError", "OSError"},
  ),
  # --- network ---
  (
    "network",
    "socket_connect",
    """
import socket
socket.create_connection(('127.0.0.1', {listen}), timeout=2)
""",
    5,
    {"SandboxViolation"},
  ),
  (
    "network",
    "cv2_videocapture_url",
    """
cap = cv2.VideoCapture('http://127.0.0.1:{listen}/stream.mjpg')
ok, frame = cap.read()
assert ok, 'no frame from the URL'
""",
    5,
    {"SandboxViolation", "AssertionError"},
  ),
  (
    "network",
    "urllib",
    """
import urllib.request
urllib.request.urlopen('http://127.0.0.1:{listen}/', timeout=2)
""",
    5,
    {"SandboxViolation", "URLError"},
  ),
  (
    "network",
    "ctypes_socket",
    """
import ctypes
fd = ctypes.CDLL(None).socket(2, 1, 0)
raise RuntimeError('socket() returned %d' % fd)
""",
    5,
    {"SandboxViolation", "RuntimeError"},
  ),
  # --- process spawning ---
  (
    "process",
    "os_system",
    "import os\nos.system('touch {outside}/pwned')\nraise RuntimeError('ran')",
    5,
    {"SandboxViolation"},
  ),
  (
    "process",
    "subprocess_run",
    """
import subprocess
subprocess.run(['touch', '{outside}/pwned'])
""",
    5,
    {"SandboxViolation", "PermissionError", "BlockingIOError"},
  ),
  ("process", "os_fork", "import os\nos.fork()", 5, {"SandboxViolation"}),
  (
    "process",
    "ctypes_fork_exec",
    """
import ctypes
libc = ctypes.CDLL(None)
libc.fork()
libc.execv(b'/bin/sh', None)
""",
    5,
    {"SandboxViolation"},
  ),
  (
    "process",
    "posix_spawn",
    "import os\nos.posix_spawn('/bin/touch', ['touch', '{outside}/pwned'], {{}})",
    5,
    {"SandboxViolation", "PermissionError", "BlockingIOError"},
  ),
  (
    "process",
    "ctypes_unshare_mount",
    """
import ctypes
libc = ctypes.CDLL(None)
libc.unshare(0x00020000)
libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
""",
    5,
    {"SandboxViolation"},
  ),
  (
    "process",
    "ptrace_parent",
    """
import ctypes, os
ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)
""",
    5,
    {"SandboxViolation"},
  ),
  # --- leaking the environment and /proc ---
  ("leak", "environ_canary", "import os\nprint(os.environ['EXECUTOR_TEST_CANARY'])", 5, {"KeyError"}),
  (
    "leak",
    "proc_parent_environ",
    "import os\nprint(open('/proc/%d/environ' % os.getppid()).read())",
    5,
    {"PermissionError"},
  ),
  ("leak", "proc_listing", "import os\nprint(os.listdir('/proc'))", 5, {"PermissionError"}),
  ("leak", "proc_self_mem", "open('/proc/self/mem', 'rb').read(16)", 5, {"PermissionError"}),
  # --- tampering with numpy or builtins to affect later calls ---
  (
    "tamper",
    "builtins_and_numpy_then_persist",
    """
import builtins, sys
builtins.len = lambda x: 0
builtins.pwned = True
np.pwned = True
np.array = None
sys.modules['pwned'] = sys
Image.Image.rotate = lambda *a, **k: None
open(np.__file__, 'a').write('\\nimport os; os.system("touch {outside}/pwned")\\n')
""",
    5,
    {"PermissionError", "OSError"},
  ),
  (
    "tamper",
    "sitecustomize_and_pth",
    """
import os, site
path = os.path.join(site.getsitepackages()[0], 'pwned.pth')
open(path, 'w').write('import os\\n')
""",
    5,
    {"PermissionError", "OSError"},
  ),
  (
    "tamper",
    "flood_the_trace",
    """
import sys
ops = [m for name, m in sys.modules.items() if name.endswith('trace') and hasattr(m, 'OPS')][0].OPS
ops.extend([{{'op': 'crop', 'box': 'x' * 10 ** 4}}] * 1000)
raise ValueError('flooded')
""",
    5,
    {"ValueError"},
  ),
  (
    "tamper",
    "raise_rlimits",
    """
import resource
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
""",
    5,
    {"ValueError", "PermissionError"},
  ),
  # --- CPU loops in Python and in C ---
  ("cpu", "python_loop", "while True:\n  pass", 1, {"TimeoutError"}),
  ("cpu", "catastrophic_regex", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", 1, {"TimeoutError"}),
  ("cpu", "big_integer_in_c", "x = 7 ** (10 ** 9)", 1, {"TimeoutError"}),
  (
    "cpu",
    "ignore_signals_then_spin",
    """
import signal
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGALRM):
  signal.signal(s, signal.SIG_IGN)
while True:
  pass
""",
    1,
    {"TimeoutError"},
  ),
  # --- memory, fork and thread bombs ---
  ("bomb", "memory_string", "x = 'a' * (10 ** 11)", 5, {"MemoryError"}),
  ("bomb", "memory_numpy", "x = np.ones((100000, 100000))", 5, {"MemoryError"}),
  # Touches every page it gets (slow on a loaded 2-core VM), hence the longer deadline.
  ("bomb", "memory_growth", "xs = []\nwhile True:\n  xs.append(bytearray(10 ** 8))", 20, {"MemoryError"}),
  ("bomb", "fork_bomb", "import os\nwhile True:\n  os.fork()", 5, {"SandboxViolation"}),
  (
    "bomb",
    "thread_bomb",
    """
import threading, time
threads = [threading.Thread(target=time.sleep, args=(30,)) for _ in range(10000)]
for t in threads:
  t.start()
""",
    5,
    {"RuntimeError"},
  ),
  (
    "bomb",
    "decompression_bomb_in_code",
    """
import io, struct, zlib
side = 50000
body = zlib.compress(b'\\x00' * (side + 1) * 64)
def chunk(k, d):
  return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))
data = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
data += chunk(b'IDAT', body) + chunk(b'IEND', b'')
Image.MAX_IMAGE_PIXELS = None
result = Image.open(io.BytesIO(data))
result.load()
""",
    5,
    {"MemoryError", "OSError", "ValueError", "DecompressionBombError", "OutputTooLarge"},
  ),
  # --- huge outputs, print floods, sleeping past the deadline ---
  ("output", "huge_image", "result = Image.new('L', (20000, 20000))", 5, {"OutputTooLarge"}),
  ("output", "too_many_images", "result = [image] * 50", 5, {"OutputTooLarge"}),
  ("output", "print_flood_loop", "while True:\n  print('x' * 1000)", 5, {"OutputTooLarge"}),
  ("output", "print_one_huge_line", "print('x' * 10 ** 7)", 5, {"OutputTooLarge"}),
  ("sleep", "sleep_past_deadline", "import time\ntime.sleep(100)", 1, {"TimeoutError"}),
  ("sleep", "exit_before_result", "import os\nos._exit(3)", 5, {"ExitError"}),
]


def test_at_least_thirty_attacks_in_every_group():
  groups = {a[0] for a in ATTACKS}
  assert len(ATTACKS) >= 30
  assert groups == {"escape", "files", "network", "process", "leak", "tamper", "cpu", "bomb", "output", "sleep"}


@pytest.mark.parametrize("group,name,code,timeout_s,accepted", ATTACKS, ids=[f"{a[0]}-{a[1]}" for a in ATTACKS])
def test_attack_fails_cleanly(service, listener, outside_dir, group, name, code, timeout_s, accepted):
  del group, name
  before = _listing(SANDBOX_VISIBLE_DIR)
  src = code.format(listen=listener.port, visible=SANDBOX_VISIBLE_DIR, outside=outside_dir)
  out = execute(service, src, timeout_s=timeout_s)
  assert not out["ok"], out
  err = out["error"]
  assert err["type"] in accepted, err
  assert err["message"], err
  text = json.dumps(out)
  assert len(text) < 400_000  # answers stay small whatever the code did
  assert CANARY not in text
  assert _listing(SANDBOX_VISIBLE_DIR) == before
  assert os.listdir(outside_dir) == []
  assert listener.connections == []
  assert service.get_json("/healthz")["ok"]
  clean = execute(service, CLEAN_STATE_PROBE)
  assert clean["ok"], clean["error"]


def test_decompression_bomb_input_is_refused(service):
  """An input image is not the code's doing: a bomb is refused (400) like any unreadable image."""
  with pytest.raises(urllib.error.HTTPError) as refused:
    execute(service, "result = image", images=[_bomb_png(12000)])
  assert refused.value.code == 400
  out = json.loads(refused.value.read())
  assert not out["ok"]
  assert out["error"]["type"] == "InputImageError"
  assert "input image 0 is too large" in out["error"]["message"]
  assert execute(service, CLEAN_STATE_PROBE)["ok"]


def test_service_survived_and_counted(service, listener):
  health = service.get_json("/healthz")
  assert health["ok"] and health["workers"] == 2
  metrics = service.get_text("/metrics")
  assert 'executor_errors_total{type="SandboxViolation"}' in metrics
  assert "executor_timeouts_total 0" not in metrics
  assert listener.connections == []
  assert CANARY not in service.log()
