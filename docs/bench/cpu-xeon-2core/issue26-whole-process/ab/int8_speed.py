import time, numpy as np
from dermsort.runtime.bundle import load_bundle
from dermsort.runtime.backends.base import create_backend
d,_=load_bundle(None); e,_=load_bundle('/tmp/int8-exp')
bf=create_backend('openvino',d,d.get('openvino-bf16')).load()
i8=create_backend('openvino',e,e.get('openvino-int8')).load()
f32=create_backend('onnxruntime',d,d.get('onnx-fp32')).load()
x=np.random.rand(4,3,224,224).astype(np.float32)
for k in (bf,i8,f32): k.predict(x)
res={'bf16':[], 'int8':[], 'ortfp32':[]}
for r in range(8):
    for name,k in (('bf16',bf),('int8',i8),('ortfp32',f32)):
        t=time.perf_counter()
        for _ in range(10): k.predict(x)
        res[name].append((time.perf_counter()-t)/40*1e3)
for k,v in res.items(): print(k, 'ms/img median', round(float(np.median(v)),2), [round(a,1) for a in v])
