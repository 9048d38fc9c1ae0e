"""Synthetic phantom chest X-ray studies: images, reports and ground truth (all synthetic)."""

from ils.phantom.sample import PhantomStudy, generate_study

__all__ = ["PhantomStudy", "generate_study", "write_phantoms"]


def __getattr__(name: str):
    if name == "write_phantoms":
        from ils.phantom.write import write_phantoms

        return write_phantoms
    raise AttributeError(name)
