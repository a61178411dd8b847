"""actspace.capture: hooks (capture), the activation store and the offline capture job.

`acts.capture` is the function actspace.capture.hooks.capture. Importing a submodule
(`import actspace.capture.hooks`) makes Python bind the name `capture` on the actspace
package to this package instead, so this package is itself callable and forwards to the
function: `acts.capture(model, hookpoints)` works in both cases.
"""
import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .hooks import capture

        return capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
