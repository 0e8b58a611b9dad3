import onnxruntime as ort, numpy as np, time, threading
from concurrent.futures import ThreadPoolExecutor
m='runtime/models/default/model.onnx'
x=np.random.rand(64,3,224,224).astype(np.float32)
def sess(n):
    o=ort.SessionOptions(); o.intra_op_num_threads=n; o.inter_op_num_threads=1
    return ort.InferenceSession(m,o,providers=['CPUExecutionProvider'])
name=sess(1).get_inputs()[0].name
def run_seq(s,b):
    t=time.perf_counter(); c=time.process_time()
    for i in range(0,64,b): s.run(None,{name:x[i:i+b]})
    return (time.perf_counter()-t)/64*1e3,(time.process_time()-c)/64*1e3
def run_par(s,b,k):
    pool=ThreadPoolExecutor(k)
    t=time.perf_counter(); c=time.process_time()
    for i in range(0,64,b*k):
        fs=[pool.submit(s.run,None,{name:x[j:j+b]}) for j in range(i,i+b*k,b)]
        [f.result() for f in fs]
    return (time.perf_counter()-t)/64*1e3,(time.process_time()-c)/64*1e3
s2=sess(2); s1=sess(1); sdef=ort.InferenceSession(m,providers=['CPUExecutionProvider'])
for rep in range(2):
    print('default b1', run_seq(sdef,1))
    print('intra2 b1', run_seq(s2,1))
    print('intra2 b4', run_seq(s2,4))
    print('intra1 x2 b2', run_par(s1,2,2))
    print('intra1 x2 b1', run_par(s1,1,2))
    print('intra1 x2 b4', run_par(s1,4,2))
