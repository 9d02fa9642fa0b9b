"""Programmatic dependent launch (PDL, sm_90+; AttnConfig.mma_pdl) for the decode step's chain of launches:
query rotation -> decode_mma -> merge -> inverse rotation.  A kernel launched with ``launch_pdl=True`` may start
while the launch before it in the stream is still running (once every program of that one has called
``launch_dependents``, or ended); ``wait`` blocks until that launch has ended and its writes are visible, so a
kernel calls it before it reads anything its predecessor writes and may do other work first (decode_mma: its
tables in shared memory).  Both are PTX ``griddepcontrol`` and do nothing where the launch was an ordinary one.
Plain-Triton kernels use triton.language.extra.cuda's gdc_wait / gdc_launch_dependents; these are the Gluon
kernels' own."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


def launch_options(pdl: bool) -> dict:
    """The launch keywords of a kernel that is a programmatic dependent launch where ``pdl`` says so: none
    otherwise, so that the CPU interpreter (which runs the plain-Triton kernels with pdl off) sees no option it
    does not know."""
    return {"launch_pdl": True} if pdl else {}


@gluon.jit
def wait():
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def launch_dependents():
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)
