"""What the tests' numba cfuncs share: following an address stored in an argument block."""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["to_ptr"]


@intrinsic
def to_ptr(typingctx, addr):
    """int64 -> void*: a cfunc follows an address stored in its argument block."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen
