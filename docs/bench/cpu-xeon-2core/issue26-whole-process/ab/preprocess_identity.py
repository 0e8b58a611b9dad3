import sys, numpy as np, timeit, glob, importlib.util
sys.path.insert(0,'/tmp')
from dermsort.runtime import preprocess as pp
from dermsort.runtime.bundle import load_bundle
import dermsort.runtime.preprocess
spec0=importlib.util.spec_from_file_location('dermsort.runtime.preprocess_old','/tmp/preprocess_old.py'); old=importlib.util.module_from_spec(spec0); sys.modules[spec0.name]=old; spec0.loader.exec_module(old)
spec=load_bundle(None)[0].metadata.preprocess
files=sorted(glob.glob('/tmp/ham300/*'))+sorted(glob.glob('/work/shared/data/isic2020/images/*'))[:300]+sorted(glob.glob('/work/shared/data/ood/images/**/*',recursive=True))[:400]+sorted(glob.glob('/work/shared/data/ph2/images/*'))[:100]
diff=n=0
datas=[]
for f in files:
    d=open(f,'rb').read()
    try: a,_=old.preprocess(d,spec)
    except Exception: continue
    b,_=pp.preprocess(d,spec); n+=1; datas.append(d)
    if not np.array_equal(a,b): diff+=1
print('images',n,'differ',diff)
import time
for mod in (old,pp,old,pp):
    t0=time.process_time()
    for d in datas[:300]: mod.preprocess(d,spec)
    print(mod.__name__, (time.process_time()-t0)/300*1e3,'ms')
import dataclasses
spec2=dataclasses.replace(spec,color_constancy='none')
spec3=dataclasses.replace(spec,scale=255.0,mean=[0.485,0.456,0.406],std=[0.229,0.224,0.225])
spec4=dataclasses.replace(spec,color_constancy_power=4.0)
for sp in (spec2,spec3,spec4):
    print('spec variant differ', sum(not np.array_equal(old.preprocess(d,sp)[0],pp.preprocess(d,sp)[0]) for d in datas[:300]))
from PIL import Image
im=np.asarray(pp.resize_and_crop(pp.open_image(datas[5],spec)[0],spec),dtype=np.float32)
