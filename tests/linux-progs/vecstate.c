// SPDX-License-Identifier: Apache-2.0
//
// vecstate: does user space of this Linux system keep its vector registers?
//
// 1. Context switches. It finds which register state user space may use (CPUID, and XGETBV
//    for the XCR0 in force), forks into three processes that each fill those registers (XMM,
//    YMM or ZMM, and the AVX-512 mask registers) with their own pattern and call sched_yield()
//    ROUNDS times (on one vCPU every yield switches to another of them), checking after each
//    call that the registers still hold the pattern.
// 2. glibc. It fills the vector registers above the 128-bit XMM state (upper YMM/ZMM halves,
//    ZMM16-31, k1-k7) with a pattern, calls glibc's string and memory functions (memcpy,
//    memmove, memset, memcmp, memchr, strlen, strchr, strcmp, strcpy) on many sizes, and checks
//    the pattern is still there: legacy SSE code leaves those bits alone, AVX/AVX-512 code does
//    not. So it tells which code glibc selected under the GLIBC_TUNABLES in force.
//
// Under a nested PVM hypervisor the guest kernel boots with `noxsave` and saves only the
// FXSAVE state (x87 + XMM) of a task, while user space sees the host's CPUID and XCR0 (AVX and
// AVX-512 enabled): check 1 fails, and glibc's AVX string functions crash now and then when a
// switch lands inside them. tartarus-init then limits glibc to SSE code (GLIBC_TUNABLES, see
// guest-init/src/xstate.rs), and check 2 shows that it took.
//
// Prints one line, e.g.
//   vecstate: xcr0=0xe7 state=avx512 switches=corrupted glibc=sse safe=yes
// (glibc=avx: glibc's functions changed state beyond XMM, so it runs AVX or AVX-512 code)
// and exits 0 when glibc-based programs are safe (the switches keep the state, or glibc does
// not use what they lose), 1 otherwise.
//
//   cc -static -O2 -mgeneral-regs-only -o vecstate vecstate.c
//
// -mgeneral-regs-only keeps the compiler away from vector registers in this file, so between
// the asm statements that load and check them only the kernel and glibc run.

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cpuid.h>

enum { PROCESSES = 3, ROUNDS = 150 };
enum { STATE_SSE, STATE_AVX, STATE_AVX512 };

// The register file as this program loads and stores it: 32 vector registers of up to 64
// bytes, then 8 mask registers of 8 bytes.
struct regs {
    uint8_t v[32 * 64];
    uint64_t k[8];
} __attribute__((aligned(64)));

static void load(int state, const struct regs *r)
{
    switch (state) {
    case STATE_SSE:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
                         "movdqu \\i*64(%0), %%xmm\\i\n"
                         ".endr\n" ::"r"(r->v)
                         : "memory");
        break;
    case STATE_AVX:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
                         "vmovdqu \\i*64(%0), %%ymm\\i\n"
                         ".endr\n" ::"r"(r->v)
                         : "memory");
        break;
    default:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
                         "vmovdqu64 \\i*64(%0), %%zmm\\i\n"
                         ".endr\n"
                         ".irp i,1,2,3,4,5,6,7\n"
                         "kmovq 32*64+\\i*8(%0), %%k\\i\n"
                         ".endr\n" ::"r"(r)
                         : "memory");
        break;
    }
}

static void store(int state, struct regs *r)
{
    switch (state) {
    case STATE_SSE:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
                         "movdqu %%xmm\\i, \\i*64(%0)\n"
                         ".endr\n" ::"r"(r->v)
                         : "memory");
        break;
    case STATE_AVX:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
                         "vmovdqu %%ymm\\i, \\i*64(%0)\n"
                         ".endr\n"
                         "vzeroupper\n" ::"r"(r->v)
                         : "memory");
        break;
    default:
        __asm__ volatile(".irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
                         "vmovdqu64 %%zmm\\i, \\i*64(%0)\n"
                         ".endr\n"
                         ".irp i,1,2,3,4,5,6,7\n"
                         "kmovq %%k\\i, 32*64+\\i*8(%0)\n"
                         ".endr\n"
                         "vzeroupper\n" ::"r"(r)
                         : "memory");
        break;
    }
}

// sched_yield() as a bare syscall: glibc's wrapper is not needed, and nothing but the kernel runs
// between the load and the store around it (this file never uses vector registers itself).
static void yield(void)
{
    long nr = 24; // sched_yield
    __asm__ volatile("syscall" : "+a"(nr) : : "rcx", "r11", "memory");
}

// Whether byte `off` of struct regs holds state of kind `state`; with `upper_only`, only the
// state beyond the 128-bit XMM registers (what legacy SSE code never touches).
static int covered(int state, size_t off, int upper_only)
{
    size_t reg = off / 64, byte = off % 64;
    if (off >= 32 * 64)
        return state == STATE_AVX512 && (off - 32 * 64) / 8 != 0; // k1-k7
    switch (state) {
    case STATE_SSE:
        return !upper_only && reg < 16 && byte < 16;
    case STATE_AVX:
        return reg < 16 && byte < 32 && (!upper_only || byte >= 16);
    default:
        return !upper_only || reg >= 16 || byte >= 16;
    }
}

static void fill(struct regs *r, uint64_t seed)
{
    uint8_t *p = (uint8_t *)r;
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < sizeof *r; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static int differs(int state, const struct regs *a, const struct regs *b, int upper_only)
{
    const uint8_t *pa = (const uint8_t *)a, *pb = (const uint8_t *)b;
    for (size_t i = 0; i < sizeof *a; i++)
        if (covered(state, i, upper_only) && pa[i] != pb[i])
            return 1;
    return 0;
}

// Check 1 in one process: how many rounds lost some of the registers.
static int switches_lose_state(int state, uint64_t seed)
{
    static struct regs in, out;
    int bad = 0;
    fill(&in, seed);
    for (int r = 0; r < ROUNDS; r++) {
        memset(&out, 0, sizeof out);
        load(state, &in);
        yield();
        store(state, &out);
        bad += differs(state, &in, &out, 0);
    }
    return bad;
}

// Called through volatile pointers, so the compiler cannot expand them inline.
static void *(*volatile f_memcpy)(void *, const void *, size_t) = memcpy;
static void *(*volatile f_memmove)(void *, const void *, size_t) = memmove;
static void *(*volatile f_memset)(void *, int, size_t) = memset;
static int (*volatile f_memcmp)(const void *, const void *, size_t) = memcmp;
static void *(*volatile f_memchr)(const void *, int, size_t) = memchr;
static size_t (*volatile f_strlen)(const char *) = strlen;
static char *(*volatile f_strchr)(const char *, int) = strchr;
static int (*volatile f_strcmp)(const char *, const char *) = strcmp;
static char *(*volatile f_strcpy)(char *, const char *) = strcpy;

// Check 2: whether glibc's string functions change vector state beyond XMM.
static int glibc_uses_upper_state(int state)
{
    static char a[8192], b[8192];
    static struct regs in, out;
    if (state == STATE_SSE)
        return 0;
    fill(&in, 99);
    for (size_t n = 1; n <= 4096; n = n * 2 + 1) {
        load(state, &in);
        f_memset(a, 'x', n);
        a[n] = 0;
        f_memcpy(b, a, n + 1);
        f_memmove(b + 1, b, n);
        (void)f_memcmp(a, b, n);
        (void)f_memchr(a, 'y', n);
        (void)f_strlen(a);
        (void)f_strchr(a, 'y');
        (void)f_strcmp(a, b);
        (void)f_strcpy(b, a);
        store(state, &out);
        if (differs(state, &in, &out, 1))
            return 1;
    }
    return 0;
}

int main(void)
{
    static const char *names[] = {"sse", "avx", "avx512"};
    unsigned int a, b, c, d;
    unsigned long long xcr0 = 0;
    int state = STATE_SSE;

    __cpuid(1, a, b, c, d);
    if (c & bit_OSXSAVE) {
        unsigned int lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((unsigned long long)hi << 32) | lo;
        if ((c & bit_AVX) && (xcr0 & 0x6) == 0x6)
            state = STATE_AVX;
        __cpuid_count(7, 0, a, b, c, d);
        if (state == STATE_AVX && (b & bit_AVX512F) && (xcr0 & 0xe0) == 0xe0)
            state = STATE_AVX512;
    }

    pid_t pids[PROCESSES - 1];
    for (int i = 0; i < PROCESSES - 1; i++) {
        pids[i] = fork();
        if (pids[i] == 0)
            _exit(switches_lose_state(state, (uint64_t)i + 2) ? 1 : 0);
    }
    int lost = switches_lose_state(state, 1);
    for (int i = 0; i < PROCESSES - 1; i++) {
        int status = 0;
        if (pids[i] < 0 || waitpid(pids[i], &status, 0) < 0 || status != 0)
            lost++;
    }
    int glibc_upper = glibc_uses_upper_state(state);
    int safe = !lost || !glibc_upper;

    printf("vecstate: xcr0=%#llx state=%s switches=%s glibc=%s safe=%s\n", xcr0, names[state],
           lost ? "corrupted" : "ok", glibc_upper ? "avx" : "sse", safe ? "yes" : "no");
    return safe ? 0 : 1;
}
