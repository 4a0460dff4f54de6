# Reference values for tests/test_samplers.c (unipc_reference_values): python3, standard library only; reads the fixture schedule.
# double-precision scalar re-implementation of A1111 UniPC (bh1, multistep, predict_x0) for the Gaussian model
import math, sys, struct, json
f=open('/work/shared/fixtures/tiny-sd15/schedule.safetensors','rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); data=f.read()
b,e=h['alphas_cumprod']['data_offsets']; import array; ac=array.array('f'); ac.frombytes(data[b:e]); ac=list(ac)
mu,s=0.3,0.5
tarr=[(k+1)/1000 for k in range(1000)]; la=[0.5*math.log(a) for a in ac]
def interp(x,xp,yp):
    K=len(xp)
    if x<=xp[0]: lo=0
    elif x>=xp[-1]: lo=K-2
    else:
        lo=max(i for i in range(K-1) if xp[i]<=x)
    return yp[lo]+(x-xp[lo])*(yp[lo+1]-yp[lo])/(xp[lo+1]-xp[lo])
def lmc(t): return interp(t,tarr,la)
def std(t): return math.sqrt(1-math.exp(2*lmc(t)))
def lam(t): m=lmc(t); return m-0.5*math.log(1-math.exp(2*m))
def eps_model(x,t_input):
    lo=min(max(int(math.floor(t_input)),0),998); w=t_input-lo
    a=math.exp((1-w)*math.log(ac[lo])+w*math.log(ac[lo+1])); sa=math.sqrt(a); sig=math.sqrt((1-a)/a)
    xs=x/sa; den=(s*s*xs+sig*sig*mu)/(s*s+sig*sig); return (xs-den)/sig
calls=[0]
def model_fn(x,t):
    calls[0]+=1
    noise=eps_model(x,(t-0.001)*1000); return (x-std(t)*noise)/math.exp(lmc(t))
def solve(A,b):
    import copy; A=[r[:] for r in A]; b=b[:]; n=len(b)
    for c in range(n):
        p=max(range(c,n),key=lambda r:abs(A[r][c])); A[c],A[p]=A[p],A[c]; b[c],b[p]=b[p],b[c]
        for r in range(c+1,n):
            f=A[r][c]/A[c][c]
            for k in range(c,n): A[r][k]-=f*A[c][k]
            b[r]-=f*b[c]
    x=[0]*n
    for r in range(n-1,-1,-1): x[r]=(b[r]-sum(A[r][k]*x[k] for k in range(r+1,n)))/A[r][r]
    return x
def update(x,mpl,tpl,t,order,use_corrector):
    tp0=tpl[-1]; l0=lam(tp0); lt=lam(t); m0=mpl[-1]; sp0=std(tp0); st=std(t); at=math.exp(lmc(t)); h=lt-l0
    rks=[];D1s=[]
    for i in range(1,order):
        rk=(lam(tpl[-(i+1)])-l0)/h; rks.append(rk); D1s.append((mpl[-(i+1)]-m0)/rk)
    rks.append(1.)
    hh=-h; hphi1=math.expm1(hh); hphik=hphi1/hh-1; fac=1; Bh=hh
    R=[];bb=[]
    for i in range(1,order+1):
        R.append([r**(i-1) for r in rks]); bb.append(hphik*fac/Bh); fac*=(i+1); hphik=hphik/hh-1/fac
    if D1s:
        rp=[0.5] if order==2 else solve([r[:-1] for r in R[:-1]],bb[:-1])
    if use_corrector:
        rc=[0.5] if order==1 else solve(R,bb)
    xt_=st/sp0*x-at*hphi1*m0
    pr=sum(r*d for r,d in zip(rp,D1s)) if D1s else 0
    xt=xt_-at*Bh*pr; mt=None
    if use_corrector:
        mt=model_fn(xt,t); cr=sum(r*d for r,d in zip(rc[:-1],D1s)) if D1s else 0
        xt=xt_-at*Bh*(cr+rc[-1]*(mt-m0))
    return xt,mt
def sample(x,steps,order=3):
    tT,t0=1.0,0.001; ts=[tT+(t0-tT)*i/steps for i in range(steps+1)]
    mpl=[model_fn(x,ts[0])]; tpl=[ts[0]]
    for io in range(1,order):
        x,mx=update(x,mpl,tpl,ts[io],io,True); mpl.append(mx); tpl.append(ts[io])
    for step in range(order,steps+1):
        so=min(order,steps+1-step); uc=step!=steps
        x,mx=update(x,mpl,tpl,ts[step],so,uc)
        for i in range(order-1): tpl[i]=tpl[i+1]; mpl[i]=mpl[i+1]
        tpl[-1]=ts[step]
        if step<steps: mpl[-1]=mx
    return x
a0=ac[999]; sig0=math.sqrt((1-a0)/a0); ae=ac[0]; sige=math.sqrt((1-ae)/ae)
for N in [10,20,40,80]:
    z=1.0; x=math.sqrt(a0)*(mu+math.sqrt(s*s+sig0*sig0)*z)
    out=sample(x,N)/math.sqrt(ae); want=mu+math.sqrt(s*s+sige*sige)*z
    print(N, out, want, out-want)
