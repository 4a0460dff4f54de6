#!/usr/bin/env python3
"""safetensors_to_ckpt.py IN.safetensors OUT.ckpt — writes a PyTorch-format zip checkpoint ({"state_dict": {...}})
with the same tensors, using only the standard library (no torch), so tests can check kiln's .ckpt loader
against the safetensors original. The pickle references torch's rebuild function and storage classes by name,
exactly as torch.save writes them; nothing here imports torch."""
import collections, io, json, pickle, struct, sys, types, zipfile

def fake_global(module, name):
    mod = sys.modules.setdefault(module, types.ModuleType(module))
    if not hasattr(mod, name):
        obj = type(name, (), {}) if name.endswith("Storage") else (lambda *a: None)
        obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
        setattr(mod, name, obj)
    return getattr(mod, name)

STORAGE = {"F16": "HalfStorage", "F32": "FloatStorage", "BF16": "BFloat16Storage", "I64": "LongStorage"}
SIZE = {"F16": 2, "F32": 4, "BF16": 2, "I64": 8}
for name in STORAGE.values():
    fake_global("torch", name)
rebuild = fake_global("torch._utils", "_rebuild_tensor_v2")
sys.modules["torch"]._utils = sys.modules["torch._utils"]

class StorageRef:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel

class TensorRef:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape
    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (rebuild, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))

class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", fake_global("torch", STORAGE[obj.dtype]), obj.key, "cpu", obj.numel)
        return None

def main(src, dst):
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    state, blobs = collections.OrderedDict(), []
    for i, (name, t) in enumerate((k, v) for k, v in header.items() if k != "__metadata__"):
        b, e = t["data_offsets"]
        numel = (e - b) // SIZE[t["dtype"]]
        state[name] = TensorRef(StorageRef(str(i), t["dtype"], numel), t["shape"])
        blobs.append((str(i), raw[base + b:base + e]))
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"state_dict": state})
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in blobs:
            z.writestr("archive/data/" + key, data)
        z.writestr("archive/version", "3\n")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
