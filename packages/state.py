"""FX `context.state`: one JSON object per package, read at the start of a step and saved after it.

A step sees the state as it was when it started and changes it as a whole (FX's `state.put` writes the full
object). Saving the whole object back would lose the updates of a run of the same package that overlapped. So
only what the step changed is applied, key by key, under a row lock: two overlapping runs that put different keys
both keep theirs; the later one wins on a key both put.
"""

from django.db import transaction

from .models import Package, PackageState


def load(package: Package) -> dict:
    state = PackageState.objects.filter(package=package).values_list("data", flat=True).first()
    return state if isinstance(state, dict) else {}


def save_changes(package: Package, before: dict, after: dict) -> list[str]:
    """Apply the keys `after` adds, changes or removes relative to `before`; returns the changed keys."""
    changed = [key for key, value in after.items() if key not in before or before[key] != value]
    removed = [key for key in before if key not in after]
    if not changed and not removed:
        return []
    PackageState.objects.get_or_create(package=package)
    with transaction.atomic():
        state = PackageState.objects.select_for_update().get(package=package)
        for key in removed:
            state.data.pop(key, None)
        state.data.update({key: after[key] for key in changed})
        state.save(update_fields=["data", "updated_at"])
    return changed + removed
