"""Build the compiled kernels of volbin.kernels (metadata lives in pyproject.toml).

The extensions use typed memoryviews (the buffer protocol) and not numpy's C API, so a
build does not depend on the numpy it was built with.  They are compiled without fast-math
and with fused multiply-add off: the float results of the loops are defined operation by
operation (``tests/reference.py`` reproduces them bit for bit), and a contracted ``a * b + c``
would round differently.  ``-fno-trapping-math`` changes no value (it only stops the compiler
from keeping floating-point exception flags exact), and lets it turn comparisons into
branch-free selections and vectorise them.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ("_random", "_histogram", "_threshold", "_diffusion", "_void_cluster", "_tone", "_classify")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}


class BuildExt(build_ext):
    """Optimise, but keep IEEE arithmetic exactly as written; build the modules in parallel."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:
            self.parallel = True

    def run(self) -> None:
        super().run()
        if self.inplace:
            # An in-place (editable) install runs the package from its sources; compile their
            # bytecode now, as installing a wheel does, so that a process started where no
            # bytecode may be written (PYTHONDONTWRITEBYTECODE, a read-only checkout) does not
            # compile every module again at each start.  Python checks each file's stamp
            # against its source and recompiles an edited one.
            import compileall
            from pathlib import Path

            compileall.compile_dir(str(Path(__file__).parent / "volbin"), quiet=1)

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            args = ["/O2", "/fp:precise"]  # since Visual Studio 2022, precise does not contract
        else:
            args = ["-O3", "-g0", "-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math"]
        for ext in self.extensions:
            ext.extra_compile_args = [*ext.extra_compile_args, *args]
        super().build_extensions()


extensions = [
    Extension(f"volbin.kernels.{m}", [f"volbin/kernels/{m}.pyx"], include_dirs=["volbin/kernels"])
    for m in MODULES
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES),
    cmdclass={"build_ext": BuildExt},
)
