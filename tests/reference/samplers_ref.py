# Reference values for tests/test_samplers.c (reference_values): run with python3 (standard library only).
# Scalar double-precision re-implementations of k-diffusion (ab527a9) / A1111 samplers on the
# closed-form Gaussian model, with deterministic "noise": the k-th randn draw is sin(k+1), the
# k-th brownian value is cos(k+1). Prints x_final for x_init = mu + sqrt(s^2+sigma0^2).
import math, struct
mu, s = 0.3, 0.5
def f32(v): return struct.unpack('f', struct.pack('f', v))[0]
def D(x, sig): return (s*s*x + sig*sig*mu)/(s*s+sig*sig)
def karras(n, smin=0.0291675, smax=14.614642, rho=7.0):
    out=[]
    for i in range(n):
        r = i/(n-1) if n>1 else 0
        out.append((smax**(1/rho) + r*(smin**(1/rho)-smax**(1/rho)))**rho)
    return [f32(v) for v in out]+[0.0]
class Noise:
    def __init__(s): s.k=0; s.b=0
    def randn(s): s.k+=1; return math.sin(s.k)
    def brown(s, a, b): s.b+=1; return math.cos(s.b)
calls=[0]
def model(x, sig): calls[0]+=1; return D(x, sig)
def anc(sf, st, eta=1.0):
    if not eta: return st, 0.0
    up=min(st, eta*(st**2*(sf**2-st**2)/sf**2)**0.5); return (st**2-up**2)**0.5, up
def to_d(x, sig, den): return (x-den)/sig
def euler_a(x, sg, N):
    for i in range(len(sg)-1):
        den=model(x,sg[i]); sd,su=anc(sg[i],sg[i+1]); d=to_d(x,sg[i],den); x=x+d*(sd-sg[i])
        if sg[i+1]>0: x=x+N.randn()*su
    return x
def dpm2(x, sg, N):
    for i in range(len(sg)-1):
        N.randn(); sh=sg[i]; den=model(x,sh); d=to_d(x,sh,den)
        if sg[i+1]==0: x=x+d*(sg[i+1]-sh)
        else:
            sm=math.exp(math.log(sh)+0.5*(math.log(sg[i+1])-math.log(sh)))
            x2=x+d*(sm-sh); d2=to_d(x2,sm,model(x2,sm)); x=x+d2*(sg[i+1]-sh)
    return x
def dpm2a(x, sg, N):
    for i in range(len(sg)-1):
        den=model(x,sg[i]); sd,su=anc(sg[i],sg[i+1]); d=to_d(x,sg[i],den)
        if sd==0: x=x+d*(sd-sg[i])
        else:
            sm=math.exp(math.log(sg[i])+0.5*(math.log(sd)-math.log(sg[i])))
            x2=x+d*(sm-sg[i]); d2=to_d(x2,sm,model(x2,sm)); x=x+d2*(sd-sg[i]); x=x+N.randn()*su
    return x
def lms(x, sg, N, order=4):
    ds=[]
    for i in range(len(sg)-1):
        den=model(x,sg[i]); ds.append(to_d(x,sg[i],den)); ds=ds[-order:]
        cur=min(i+1,order)
        def coeff(j):
            # exact integral of the Lagrange basis polynomial (Simpson is exact up to cubic)
            a,b=sg[i],sg[i+1]
            def fn(tau):
                p=1.0
                for k in range(cur):
                    if k==j: continue
                    p*=(tau-sg[i-k])/(sg[i-j]-sg[i-k])
                return p
            return (b-a)/6*(fn(a)+4*fn((a+b)/2)+fn(b))
        x=x+sum(coeff(j)*d for j,d in zip(range(cur),reversed(ds)))
    return x
def dpmpp_2s_a(x, sg, N):
    for i in range(len(sg)-1):
        den=model(x,sg[i]); sd,su=anc(sg[i],sg[i+1])
        if sd==0: x=x+to_d(x,sg[i],den)*(sd-sg[i])
        else:
            t,tn=-math.log(sg[i]),-math.log(sd); h=tn-t; sm=t+0.5*h
            x2=(math.exp(-sm)/math.exp(-t))*x-math.expm1(-h*0.5)*den
            den2=model(x2,math.exp(-sm)); x=(math.exp(-tn)/math.exp(-t))*x-math.expm1(-h)*den2
        if sg[i+1]>0: x=x+N.randn()*su
    return x
def dpmpp_sde(x, sg, N, eta=1.0, r=0.5):
    sf=lambda t: math.exp(-t); tf=lambda v: -math.log(v)
    for i in range(len(sg)-1):
        den=model(x,sg[i])
        if sg[i+1]==0: x=x+to_d(x,sg[i],den)*(sg[i+1]-sg[i]); continue
        t,tn=tf(sg[i]),tf(sg[i+1]); h=tn-t; sm=t+h*r; fac=1/(2*r)
        sd,su=anc(sf(t),sf(sm),eta); s_=tf(sd)
        x2=(sf(s_)/sf(t))*x-math.expm1(t-s_)*den; x2=x2+N.brown(sf(t),sf(sm))*su
        den2=model(x2,sf(sm))
        sd,su=anc(sf(t),sf(tn),eta); tn_=tf(sd); dd=(1-fac)*den+fac*den2
        x=(sf(tn_)/sf(t))*x-math.expm1(t-tn_)*dd; x=x+N.brown(sf(t),sf(tn))*su
    return x
def dpmpp_2m_sde(x, sg, N, heun=False, eta=1.0):
    old=None; hl=None
    for i in range(len(sg)-1):
        den=model(x,sg[i])
        if sg[i+1]==0: x=den
        else:
            t,s_=-math.log(sg[i]),-math.log(sg[i+1]); h=s_-t; eh=eta*h
            x=sg[i+1]/sg[i]*math.exp(-eh)*x+(-math.expm1(-h-eh))*den
            if old is not None:
                r=hl/h
                if heun: x=x+((-math.expm1(-h-eh))/(-h-eh)+1)*(1/r)*(den-old)
                else: x=x+0.5*(-math.expm1(-h-eh))*(1/r)*(den-old)
            x=x+N.brown(sg[i],sg[i+1])*sg[i+1]*math.sqrt(-math.expm1(-2*eh))
        old=den; hl=h
    return x
def dpmpp_3m_sde(x, sg, N, eta=1.0):
    d1=d2=None; h1=h2=None; h=None
    for i in range(len(sg)-1):
        den=model(x,sg[i])
        if sg[i+1]==0: x=den
        else:
            t,s_=-math.log(sg[i]),-math.log(sg[i+1]); h=s_-t; he=h*(eta+1)
            x=math.exp(-he)*x+(-math.expm1(-he))*den
            if h2 is not None:
                r0=h1/h; r1=h2/h; a=(den-d1)/r0; b=(d1-d2)/r1
                dd1=a+(a-b)*r0/(r0+r1); dd2=(a-b)/(r0+r1)
                p2=math.expm1(-he)/he+1; p3=p2/he-0.5; x=x+p2*dd1-p3*dd2
            elif h1 is not None:
                r=h1/h; x=x+(math.expm1(-he)/he+1)*((den-d1)/r)
            x=x+N.brown(sg[i],sg[i+1])*sg[i+1]*math.sqrt(-math.expm1(-2*h*eta))
        d1,d2=den,d1; h1,h2=h,h1
    return x
# DPM-Solver
def dsig(t): return math.exp(-t)
def dt_(v): return -math.log(v)
def eps(x,t): return (x-model(x,dsig(t)))/dsig(t)
def step1(x,t,tn,c): h=tn-t; return x-dsig(tn)*math.expm1(h)*c['eps']
def step2(x,t,tn,c,r1=0.5):
    h=tn-t
    if 'eps_r1' not in c:
        s1=t+r1*h; u1=x-dsig(s1)*math.expm1(r1*h)*c['eps']; c['eps_r1']=eps(u1,s1)
    return x-dsig(tn)*math.expm1(h)*c['eps']-dsig(tn)/(2*r1)*math.expm1(h)*(c['eps_r1']-c['eps'])
def step3(x,t,tn,c,r1=1/3,r2=2/3):
    h=tn-t; s1=t+r1*h; s2=t+r2*h
    if 'eps_r1' not in c:
        u1=x-dsig(s1)*math.expm1(r1*h)*c['eps']; c['eps_r1']=eps(u1,s1)
    u2=x-dsig(s2)*math.expm1(r2*h)*c['eps']-dsig(s2)*(r2/r1)*(math.expm1(r2*h)/(r2*h)-1)*(c['eps_r1']-c['eps'])
    c['eps_r2']=eps(u2,s2)
    return x-dsig(tn)*math.expm1(h)*c['eps']-dsig(tn)/r2*(math.expm1(h)/h-1)*(c['eps_r2']-c['eps'])
def dpm_fast(x, smin, smax, n, N, eta=1.0):
    ts_,te=dt_(smax),dt_(smin); m=n//3+1
    ts=[ts_+(te-ts_)*i/m for i in range(m+1)]
    orders=[3]*(m-2)+[2,1] if n%3==0 else [3]*(m-1)+[n%3]
    for i in range(len(orders)):
        t,tn=ts[i],ts[i+1]
        if eta:
            sd,su=anc(dsig(t),dsig(tn),eta); tn_=min(te,dt_(sd)); su=(dsig(tn)**2-dsig(tn_)**2)**0.5
        else: tn_,su=tn,0.0
        c={'eps':eps(x,t)}
        x={1:step1,2:step2,3:step3}[orders[i]](x,t,tn_,c)
        x=x+su*N.randn()
    return x
def dpm_adaptive(x, smin, smax, N, eta=1.0, order=3, rtol=0.05, atol=0.0078, h=0.05):
    ts_,te=dt_(smax),dt_(smin); s_=ts_; xp=x; errs=None; o=1.5 if eta else order
    b1=1/o; nacc=0; nrej=0
    while s_<te-1e-5:
        t=min(te,s_+h)
        if eta:
            sd,su=anc(dsig(s_),dsig(t),eta); t2=min(te,dt_(sd)); su=(dsig(t)**2-dsig(t2)**2)**0.5
        else: t2,su=t,0.0
        c={'eps':eps(x,s_)}
        xl=step2(x,s_,t2,c,r1=1/3); xh=step3(x,s_,t2,c)
        delta=max(atol, rtol*max(abs(xl),abs(xp))); err=abs((xl-xh)/delta)
        inv=1/(err+1e-8)
        if errs is None: errs=[inv]*3
        errs[0]=inv; fac=errs[0]**b1; fac=1+math.atan(fac-1); acc=fac>=0.81
        if acc: errs[2]=errs[1]; errs[1]=errs[0]
        h*=fac
        if acc: xp=xl; x=xh+su*N.randn(); s_=t; nacc+=1
        else: nrej+=1
    return x
def restart(x, sg, N):
    steps=len(sg)-1
    rl={}
    if steps>=20:
        rs,rt=9,1
        if steps>=36: rs=steps//4; rt=2
        sg=karras(steps-rs*rt, sg[-2], sg[0]); rl={0.1:[rs+1,rt,2]}
    rl={min(range(len(sg)),key=lambda i:abs(sg[i]-k)):v for k,v in rl.items()}
    sl=[]
    for i in range(len(sg)-1):
        sl.append((sg[i],sg[i+1]))
        if i+1 in rl:
            rs,rt,rm=rl[i+1]; mi=i+1; ma=min(range(len(sg)),key=lambda j:abs(sg[j]-rm))
            if ma<mi:
                sr=karras(rs, sg[mi], sg[ma])[:-1]
                for _ in range(rt): sl.extend(zip(sr[:-1],sr[1:]))
    last=None
    for o,nw in sl:
        if last is None: last=o
        elif last<o: x=x+N.randn()*(o**2-last**2)**0.5
        den=model(x,o); d=to_d(x,o,den); dt=nw-o
        if nw==0: x=x+d*dt
        else:
            x2=x+d*dt; d2=to_d(x2,nw,model(x2,nw)); x=x+(d+d2)/2*dt
        last=nw
    return x
def lcm(x, sg, N):
    for i in range(len(sg)-1):
        x=model(x,sg[i])
        if sg[i+1]>0: x=x+sg[i+1]*N.randn()
    return x
runs=[('DPM2',dpm2,10),('DPM2 a',dpm2a,10),('LMS',lms,10),('DPM++ 2S a',dpmpp_2s_a,10),('DPM++ SDE',dpmpp_sde,10),
      ('DPM++ 2M SDE',lambda x,sg,N: dpmpp_2m_sde(x,sg,N,False),10),('DPM++ 2M SDE Heun',lambda x,sg,N: dpmpp_2m_sde(x,sg,N,True),10),
      ('DPM++ 3M SDE',dpmpp_3m_sde,10),('Restart',restart,24),('Restart',restart,40),('LCM',lcm,6),('Euler a',euler_a,10)]
for name,fn,n in runs:
    sg=karras(n); x=mu+math.sqrt(s*s+sg[0]**2); calls[0]=0
    print('    {"%s", %d, %.10f, %d},' % (name, n, fn(x,sg,Noise()), calls[0]))
for name,n in [('DPM fast',10),('DPM adaptive',10)]:
    sg=karras(n); x=mu+math.sqrt(s*s+sg[0]**2); calls[0]=0
    v = dpm_fast(x, sg[-2], sg[0], n, Noise()) if name=='DPM fast' else dpm_adaptive(x, sg[-2], sg[0], Noise())
    print('    {"%s", %d, %.10f, %d},' % (name, n, v, calls[0]))
