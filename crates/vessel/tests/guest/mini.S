/*
 * mini: Vessel's purpose-built test guest.
 *
 * A tiny x86-64 kernel booted by Vessel through the PVH boot protocol. It exists to test the VMM
 * directly on /dev/kvm, including on kvm_pvm hosts, where guest ring-0 (CPL0) and real-mode code
 * is emulated instruction by instruction (~8000x slower, and with gaps: no SSE/AVX, xsave,
 * cmpxchg16b, popcnt, rdtscp, int3, invpcid, lsl/lar/verw, stac/clac; vmcall livelocks) while
 * ring-3 (CPL3) code runs natively. So the ring-0 paths here are short and use only plain
 * integer instructions; real work (loops, waiting, table parsing) happens at CPL3, which returns
 * to CPL0 only through an exception (`ud2`, our "system call") or an interrupt.
 *
 * Build (at test time, never committed):
 *     gcc -nostdlib -static -no-pie -Wl,-T,mini.ld -Wl,--build-id=none \
 *         -Wl,-z,max-page-size=0x1000 -o mini.elf mini.S
 * (tests/common/mod.rs does this; ld's warning about the RWX segment is expected).
 *
 * Boot protocol, as Vessel implements PVH (crates/vmm/src/boot.rs):
 *   - entry at the address in the ELF note "Xen"/18, in 32-bit protected mode, paging off,
 *     interrupts off; CS = 0x08 (flat 32-bit code), DS/ES/SS = 0x18 (flat data) in a GDT at
 *     0x500 that we replace at once;
 *   - EBX = physical address of struct hvm_start_info: magic 0x336ec578 at +0, nr_modules at
 *     +12, cmdline_paddr (u64, NUL-terminated string) at +24, rsdp_paddr (u64) at +32;
 *   - RAM from 0 to --memory; low pages used by Vessel: 0x500 (GDT), 0x6000-0x6fff (start info,
 *     module list, memory map), 0x20000 (command line), 0xe0000-0xfffff (ACPI, reset vector).
 *
 * Devices used: COM1 16550 UART at I/O port 0x3f8 (IRQ 4), the in-kernel IOAPIC (0xfec00000)
 * and local APIC (0xfee00000), ACPI sleep control at port 0x600 (write 0x34 = SLP_TYP 5 | SLP_EN
 * to power off), the i8042 at port 0x64 (write 0xfe to reset), and the legacy 8259 PICs at ports
 * 0x21/0xa1 (masked, so IRQs only arrive through the IOAPIC).
 *
 * The kernel command line's first word picks a scenario (see `scenarios` below):
 *   hello        print from CPL0, sum 0..10^7 at CPL3 (native speed), print it, power off
 *   irq          count UART transmit-empty interrupts routed IOAPIC pin 4 -> vector 0x40,
 *                waiting in `hlt` at CPL0 and then spinning at CPL3
 *   smp          wake the APs with INIT-SIPI-SIPI through a real-mode trampoline at 0x10000,
 *                each AP checks in with `lock xadd`; the BSP counts MADT entries and waits at
 *                CPL3 for every AP, then prints "mini: cpus online=N"
 *   reboot       reset through the i8042 (every boot prints "mini: boot")
 *   triplefault  load an empty IDT and execute `ud2`
 *   mmio         from CPL3, write and read an unclaimed MMIO address (reads must be all ones)
 *   fetchmmio    jump to an unclaimed MMIO address at CPL0: KVM cannot fetch instructions from
 *                MMIO and stops the vCPU with an internal error (emulation failure)
 *   tick         forever: print "mini: tick N" about every TICK_TSC TSC ticks, spinning at
 *                CPL3 in between (a guest that runs until the VMM stops it)
 *   work         forever: count down a loop of WORK_LOOPS iterations at CPL3, then print
 *                "mini: work N" (N: loops done so far): a CPU-bound guest whose own progress
 *                measures the CPU it was given
 *   fattick      write every page from FAT_START to FAT_END (so that much guest RAM is
 *                resident on the host), print "mini: touched", then tick (needs 64M)
 *   button       route the ACPI power button's line (IOAPIC pin 3) to vector 0x41, print
 *                "mini: waiting for the power button", wait in `hlt`, and power off when it
 *                is pressed (as a guest that handles the button does)
 *   hammer       keep virtio devices busy forever, all from CPL3: find every virtio-mmio
 *                window (0xd0000000 + n*0x1000, while the magic reads "virt"), bring up each
 *                block device's queue 0 with 1 MiB reads of sector 0 and each network
 *                device's transmit queue 1 with 1514-byte frames (every avail entry naming
 *                one request chain, HAMMER_QSIZE entries), print "mini: hammering N queues",
 *                then keep every such ring full: whenever used.idx moves, avail.idx =
 *                used.idx + size and a write to QueueNotify (no interrupts: the IOAPIC pins
 *                stay masked). A guest that never lets its devices rest.
 * Anything unexpected (an unknown scenario, an exception) prints "mini: PANIC: ..." and
 * triple-faults on purpose, so a broken run ends at once with vessel exiting 1.
 *
 * Memory map of the guest (all identity-mapped):
 *   0x10000            AP real-mode trampoline (copied there by the BSP; SIPI vector 0x10)
 *   0x100000...        this image: code, data (GDT, TSS, IDT, page tables, stacks)
 *   0x200000-0x9fffff  hammer: rings, requests and data buffers of the hammered queues
 *   0x0 - 4 GiB        identity-mapped with 2 MiB pages, user-accessible (U/S=1) so CPL3 code
 *                      can read kernel data and touch MMIO; the top GiB is mapped uncached
 */

/* ---- Constants ---------------------------------------------------------------------------- */

#define PVH_MAGIC        0x336ec578
#define SI_CMDLINE       24          /* hvm_start_info.cmdline_paddr */
#define SI_RSDP          32          /* hvm_start_info.rsdp_paddr */

#define COM1             0x3f8       /* 16550: THR +0, IER +1, IIR +2, LCR +3, MCR +4, LSR +5 */
#define UART_IER_THRE    0x02        /* interrupt when the transmit holding register is empty */
#define UART_MCR_OUT2    0x08        /* gates the UART's interrupt output on a PC */
#define UART_MCR_DTR_RTS 0x03
#define UART_LSR_THRE    0x20

#define PM_SLEEP_CONTROL 0x600       /* ACPI hardware-reduced sleep control register */
#define PM_S5            0x34        /* SLP_TYP 5 (S5, soft off) << 2 | SLP_EN (bit 5) */
#define I8042_COMMAND    0x64
#define I8042_RESET      0xfe        /* pulse the CPU reset line */
#define PIC1_DATA        0x21
#define PIC2_DATA        0xa1

#define IOAPIC_BASE      0xfec00000  /* IOREGSEL at +0, IOWIN at +0x10 */
#define IOAPIC_REDTBL    0x10        /* entry n: low dword at 0x10+2n, high dword at 0x11+2n */
#define UART_GSI         4           /* ISA IRQ 4 = IOAPIC pin 4 (identity mapping) */
#define BUTTON_GSI       3           /* the power button's GED line (vmm::layout::POWER_BUTTON_GSI) */

#define LAPIC_BASE       0xfee00000
#define LAPIC_ID         0x20        /* APIC ID in bits 24-31 */
#define LAPIC_EOI        0xb0
#define LAPIC_SVR        0xf0        /* spurious vector register: bit 8 = software enable */
#define LAPIC_ICR_LO     0x300
#define LAPIC_ICR_HI     0x310
#define ICR_ALL_BUT_SELF 0x000c0000  /* destination shorthand 11 */
#define ICR_LEVEL_ASSERT 0x00004000
#define ICR_INIT         0x00000500
#define ICR_STARTUP      0x00000600

#define VEC_UART         0x40
#define VEC_BUTTON       0x41
#define VEC_SPURIOUS     0xff

#define TRAMPOLINE       0x10000     /* AP real-mode start: CS:IP = 0x1000:0000 */
#define SIPI_VECTOR      (TRAMPOLINE >> 12)

#define MSR_EFER         0xc0000080
#define EFER_LME         0x100
#define CR0_PE           0x1
#define CR0_PG           0x80000000
#define CR4_PAE          0x20

/* Selectors of our GDT (see `gdt` below). RPL 3 for the user ones. */
#define SEL_CODE64       0x08
#define SEL_DATA         0x10
#define SEL_CODE32       0x18
#define SEL_USER_DATA    0x23
#define SEL_USER_CODE    0x2b
#define SEL_TSS          0x30

/* "System calls": CPL3 code puts a number in RAX, an argument in RDI, and executes `ud2`. The
 * #UD handler skips the 2-byte instruction, does the work and returns with IRETQ. Every register
 * but RAX is preserved. */
#define SYS_PUTS         1           /* print the NUL-terminated string at RDI */
#define SYS_PUT_DEC      2           /* print RDI in decimal */
#define SYS_PUT_HEX      3           /* print RDI as 0x... */
#define SYS_POWEROFF     4
#define SYS_UART_KICK    5           /* write one '+' to the UART (raises its THRE interrupt) */

#define HELLO_N          10000000    /* hello: sum 0..HELLO_N-1 at CPL3 */
#define TICK_TSC         200000000   /* tick: TSC ticks between ticks (~0.1 s at 2 GHz) */
#define WORK_LOOPS       0x8000000   /* work: iterations per unit (2^27: ~50 ms of one CPU) */
#define FAT_START        0x1000000   /* fattick: 16 MiB... */
#define FAT_END          0x3000000   /* ...to 48 MiB */
#define IRQ_ROUNDS       5           /* irq: interrupts awaited at CPL0, then again at CPL3 */

/* virtio-mmio (virtio 1.x, 4.2.2), as Vessel places it (crates/vmm/src/virtio.rs). */
#define VIRTIO_BASE      0xd0000000  /* window n at VIRTIO_BASE + n * 0x1000 */
#define VIRTIO_SLOTS     19
#define VIRTIO_MAGIC     0x74726976  /* "virt" */
#define VIO_MAGIC        0x00
#define VIO_DEVICE_ID    0x08
#define VIO_DRV_FEAT     0x20
#define VIO_DRV_FEAT_SEL 0x24
#define VIO_QUEUE_SEL    0x30
#define VIO_QUEUE_NUM    0x38
#define VIO_QUEUE_READY  0x44
#define VIO_QUEUE_NOTIFY 0x50
#define VIO_STATUS       0x70
#define VIO_QUEUE_DESC   0x80        /* low dword; high at +4 */
#define VIO_QUEUE_AVAIL  0x90
#define VIO_QUEUE_USED   0xa0
#define VIRTIO_ID_NET    1
#define VIRTIO_ID_BLOCK  2
#define VRING_NEXT       1
#define VRING_WRITE      2

/* hammer: each hammered queue gets HAMMER_REGION bytes from HAMMER_RINGS: descriptors at +0,
 * avail ring at +0x1000, used ring at +0x2000, request header (or frame) at +0x3000, status
 * byte at +0x3100, data at +0x10000 (HAMMER_DATA). A whole ring of 1 MiB reads takes the
 * device tens of milliseconds, so the guest refills it long before it drains, even when its
 * vCPU thread waits for a CPU now and then: the device is never idle. */
#define HAMMER_RINGS     0x200000
#define HAMMER_REGION    0x200000
#define HAMMER_MAX       4           /* queues hammered at most */
#define HAMMER_QSIZE     256
#define HAMMER_DATA      0x100000    /* bytes per block read: 1 MiB (the disk needs as much) */
#define HAMMER_FRAME     1514        /* bytes per transmitted frame */

/* ---- Macros ------------------------------------------------------------------------------- */

/* Kernel (CPL0) print of a string literal: PRINT "text\n". Clobbers the caller-saved set. */
.macro PRINT str
    .pushsection .rodata
.Lstr\@: .asciz "\str"
    .popsection
    lea .Lstr\@(%rip), %rsi
    call puts
.endm

/* User (CPL3) print of a string literal, through the ud2 system call. */
.macro UPRINT str
    .pushsection .rodata
.Lustr\@: .asciz "\str"
    .popsection
    lea .Lustr\@(%rip), %rdi
    mov $SYS_PUTS, %eax
    ud2
.endm

/* User system call with an argument in a register or immediate. */
.macro USYS nr, arg
    mov \arg, %rdi
    mov $\nr, %eax
    ud2
.endm

/* Fill IDT entry `vec` with a 64-bit interrupt gate to `handler` (CPL0 code), on IST `ist`. */
.macro GATE vec, handler, ist=0
    lea \handler(%rip), %rax
    lea idt+16*\vec(%rip), %rdi
    mov $\ist, %ecx
    call set_gate
.endm

/* 32-bit protected mode -> 64-bit long mode, then a far jump to `target` (64-bit code).
 * Used by the BSP (from the PVH entry) and by every AP (from the trampoline). The GDT must
 * already be ours. */
.macro ENTER_LONG_MODE target
    mov %cr4, %eax
    or $CR4_PAE, %eax               /* 4-level paging needs PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax              /* long mode enable; becomes active (LMA) with paging */
    wrmsr
    mov %cr0, %eax
    or $(CR0_PG | CR0_PE), %eax
    mov %eax, %cr0                  /* now in compatibility mode */
    ljmp $SEL_CODE64, $\target      /* a 64-bit CS: 64-bit mode */
.endm

/* ---- The PVH ELF note ----------------------------------------------------------------------- */

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long start32                   /* the physical 32-bit entry point */

/* ---- 32-bit entry (BSP) and AP protected-mode path ------------------------------------------ */

    .section .text.entry, "ax"
    .code32
    .globl start32
start32:
    cli
    mov %ebx, start_info            /* keep the hvm_start_info pointer for later */
    lgdt gdtr                       /* our GDT; CS/DS keep their cached descriptors until reloaded */
    ENTER_LONG_MODE bsp64

/* An AP arrives here from the trampoline in 32-bit protected mode with CS = SEL_CODE32. */
ap_start32:
    mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    ENTER_LONG_MODE ap64

/* ---- AP real-mode trampoline (copied to TRAMPOLINE by the BSP) ------------------------------ */

/* After INIT-SIPI-SIPI with vector 0x10 an AP starts in real mode at CS:IP = 0x1000:0000. The
 * code must therefore be position-independent with respect to CS: it addresses its own data
 * as offsets from tramp_start. */
    .code16
tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl %ds:(tramp_gdtr - tramp_start)   /* 32-bit base: our GDT in the image at >= 1 MiB */
    mov %cr0, %eax
    or $CR0_PE, %eax
    mov %eax, %cr0                  /* protected mode, still 16-bit code until the far jump */
    ljmpl $SEL_CODE32, $ap_start32  /* 32-bit offset: straight into the image */
    .balign 4
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
tramp_end:

/* ---- 64-bit code ---------------------------------------------------------------------------- */

    .text
    .code64

/* An AP in long mode: check in and halt forever (interrupts stay off; the VMM stops us). No
 * stack and no IDT are needed for this. */
ap64:
    mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $LAPIC_BASE, %ebx
    mov LAPIC_ID(%rbx), %ecx
    shr $24, %ecx                   /* our APIC ID */
    mov $1, %eax
    shl %cl, %rax
    lock or %rax, cpu_mask(%rip)    /* mark this APIC ID present */
    mov $1, %eax
    lock xadd %eax, cpus_online(%rip)   /* count ourselves in */
1:  cli
    hlt
    jmp 1b

/* The BSP in long mode. */
bsp64:
    mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp

    /* The TSS: its descriptor's base is split over the descriptor, so fill it in here. */
    lea tss(%rip), %rax
    lea gdt_tss(%rip), %rdi
    mov %ax, 2(%rdi)                /* base 15:0 */
    shr $16, %rax
    mov %al, 4(%rdi)                /* base 23:16 */
    mov %ah, 7(%rdi)                /* base 31:24 */
    shr $16, %rax
    mov %eax, 8(%rdi)               /* base 63:32 */
    lea trap_stack_top(%rip), %rax
    mov %rax, tss+4(%rip)           /* RSP0: the stack for traps and interrupts from CPL3 */
    lea df_stack_top(%rip), %rax
    mov %rax, tss+36(%rip)          /* IST1: the double-fault stack */
    movw $104, tss+102(%rip)        /* I/O map base past the limit: no I/O bitmap */
    mov $SEL_TSS, %ax
    ltr %ax

    /* The IDT: only the vectors we expect. Any other vector hits a not-present gate, which
     * raises #GP with error code vector*8+2, and the #GP handler reports it. */
    GATE 6, ud_handler              /* #UD: ud2 from CPL3 is our system call */
    GATE 8, df_handler, 1           /* #DF, on its own stack */
    GATE 13, gp_handler             /* #GP */
    GATE 14, pf_handler             /* #PF */
    GATE VEC_UART, irq_uart
    GATE VEC_BUTTON, irq_button
    GATE VEC_SPURIOUS, irq_spurious
    lidt idtr(%rip)

    /* Mask both 8259 PICs: the UART's IRQ 4 reaches the CPU through the IOAPIC only (KVM
     * routes ISA IRQs to both chips, and an unprogrammed PIC would deliver IRQ 4 as vector 4). */
    mov $0xff, %al
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA

    /* Check the start info and say hello. */
    mov start_info(%rip), %ebx
    cmpl $PVH_MAGIC, (%rbx)
    je 1f
    PRINT "mini: PANIC: bad hvm_start_info magic\n"
    jmp die
1:  mov SI_CMDLINE(%rbx), %rax
    mov %rax, cmdline(%rip)
    PRINT "mini: boot, cmdline '"
    mov cmdline(%rip), %rsi
    call puts
    PRINT "'\n"

    /* Dispatch on the command line's first word. */
    lea scenarios(%rip), %r12
2:  mov (%r12), %rdi                /* scenario name */
    test %rdi, %rdi
    jz 3f
    mov cmdline(%rip), %rsi
    call first_word_is
    test %eax, %eax
    jnz 4f
    add $16, %r12
    jmp 2b
3:  PRINT "mini: PANIC: unknown scenario (want hello, irq, smp, reboot, triplefault, mmio, fetchmmio, tick, fattick, work, button or hammer)\n"
    jmp die
4:  jmp *8(%r12)

/* ---- Scenarios (CPL0 parts) ----------------------------------------------------------------- */

scen_hello:
    PRINT "mini: hello from cpl0\n"
    lea user_hello(%rip), %rdi
    jmp enter_user

scen_mmio:
    PRINT "mini: mmio test at cpl3\n"
    lea user_mmio(%rip), %rdi
    jmp enter_user

scen_reboot:
    PRINT "mini: rebooting through the i8042\n"
    mov $I8042_RESET, %al
    out %al, $I8042_COMMAND
    jmp halt_forever

scen_fetchmmio:
    PRINT "mini: jumping to unclaimed MMIO at 0xe0000000\n"
    mov $0xe0000000, %eax
    jmp *%rax

scen_tick:
    PRINT "mini: ticking\n"
    lea user_tick(%rip), %rdi
    jmp enter_user

scen_work:
    PRINT "mini: working\n"
    lea user_work(%rip), %rdi
    jmp enter_user

scen_fattick:
    PRINT "mini: touching memory\n"
    lea user_fattick(%rip), %rdi
    jmp enter_user

scen_hammer:
    PRINT "mini: looking for virtio devices\n"
    lea user_hammer(%rip), %rdi
    jmp enter_user

scen_triplefault:
    PRINT "mini: loading an empty IDT and executing ud2\n"
    jmp die

scen_irq:
    /* Local APIC on (software enable), spurious vector 0xff. */
    mov $LAPIC_BASE, %ebx
    movl $(0x100 | VEC_SPURIOUS), LAPIC_SVR(%rbx)
    /* IOAPIC pin 4 -> vector 0x40, fixed delivery, physical destination APIC 0, edge, active
     * high, unmasked. High dword first so the entry is never live with a wrong destination. */
    mov $IOAPIC_BASE, %ebx
    movl $(IOAPIC_REDTBL + 2 * UART_GSI + 1), (%rbx)
    movl $0, 0x10(%rbx)             /* destination APIC ID 0 in bits 56-63 */
    movl $(IOAPIC_REDTBL + 2 * UART_GSI), (%rbx)
    movl $VEC_UART, 0x10(%rbx)
    /* UART: OUT2 (interrupt gate on PCs) and the THR-empty interrupt. Enabling it raises one
     * at once, since the transmitter is empty; every byte written afterwards raises another
     * once the previous one has been acknowledged by reading IIR (in irq_uart). */
    mov $(UART_MCR_OUT2 | UART_MCR_DTR_RTS), %al
    mov $(COM1 + 4), %dx
    out %al, %dx
    mov $UART_IER_THRE, %al
    mov $(COM1 + 1), %dx
    out %al, %dx
    /* Phase 1, CPL0: IRQ_ROUNDS times, wait in hlt for the interrupt count to move, then
     * write a byte to raise the next one. sti's one-instruction interrupt shadow covers hlt,
     * so an interrupt pending now wakes hlt rather than slipping in before it. */
    mov $IRQ_ROUNDS, %r12d
1:  mov irq_count(%rip), %r13
2:  sti
    hlt
    cli
    cmp irq_count(%rip), %r13
    je 2b
    mov $'+', %edi
    call putc
    dec %r12d
    jnz 1b
    PRINT "\nmini: irq cpl0 phase done\n"
    lea user_irq(%rip), %rdi
    jmp enter_user

scen_button:
    /* Local APIC on; IOAPIC pin 3 -> vector 0x41, fixed, physical destination APIC 0, edge,
     * active high, unmasked (high dword first, as in scen_irq). */
    mov $LAPIC_BASE, %ebx
    movl $(0x100 | VEC_SPURIOUS), LAPIC_SVR(%rbx)
    mov $IOAPIC_BASE, %ebx
    movl $(IOAPIC_REDTBL + 2 * BUTTON_GSI + 1), (%rbx)
    movl $0, 0x10(%rbx)
    movl $(IOAPIC_REDTBL + 2 * BUTTON_GSI), (%rbx)
    movl $VEC_BUTTON, 0x10(%rbx)
    PRINT "mini: waiting for the power button\n"
1:  sti
    hlt
    cli
    cmpq $0, button_presses(%rip)
    je 1b
    PRINT "mini: power button pressed, powering off\n"
    jmp power_off

scen_smp:
    /* The local APIC must be enabled to send IPIs reliably. */
    mov $LAPIC_BASE, %ebx
    movl $(0x100 | VEC_SPURIOUS), LAPIC_SVR(%rbx)
    mov LAPIC_ID(%rbx), %ecx
    shr $24, %ecx
    mov $1, %eax
    shl %cl, %rax
    lock or %rax, cpu_mask(%rip)    /* the BSP is present too */
    /* Copy the trampoline below 1 MiB, where a SIPI can point. */
    lea tramp_start(%rip), %rsi
    mov $TRAMPOLINE, %edi
    mov $(tramp_end - tramp_start), %ecx
    cld
    rep movsb
    /* INIT to all but self, then two STARTUPs (the MP protocol's INIT-SIPI-SIPI). KVM needs
     * no real delay between them; a short one keeps to the protocol's spirit. */
    movl $0, LAPIC_ICR_HI(%rbx)
    movl $(ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_INIT), LAPIC_ICR_LO(%rbx)
    call short_delay
    movl $(ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_STARTUP | SIPI_VECTOR), LAPIC_ICR_LO(%rbx)
    call short_delay
    movl $(ICR_ALL_BUT_SELF | ICR_LEVEL_ASSERT | ICR_STARTUP | SIPI_VECTOR), LAPIC_ICR_LO(%rbx)
    PRINT "mini: sent INIT-SIPI-SIPI\n"
    /* Wait at CPL3, where a spin loop runs natively. */
    lea user_smp(%rip), %rdi
    jmp enter_user

/* ---- Scenarios (CPL3 parts) ----------------------------------------------------------------- */

user_hello:
    xor %eax, %eax
    xor %ecx, %ecx
1:  add %rcx, %rax                  /* native speed here: ~10 ms; emulated at CPL0: ~30 s */
    inc %rcx
    cmp $HELLO_N, %rcx
    jb 1b
    mov %rax, %rbx
    UPRINT "mini: cpl3 sum(0..10000000)="
    USYS SYS_PUT_DEC, %rbx
    UPRINT "\n"
    USYS SYS_POWEROFF, $0

user_tick:
    xor %ebx, %ebx                  /* ticks so far */
1:  rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r15                  /* start of this period */
2:  pause
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r15, %rdx
    cmp $TICK_TSC, %rdx
    jb 2b
    inc %rbx
    UPRINT "mini: tick "
    USYS SYS_PUT_DEC, %rbx
    UPRINT "\n"
    jmp 1b

user_work:
    xor %ebx, %ebx                  /* units done */
1:  mov $WORK_LOOPS, %ecx
2:  dec %rcx
    jnz 2b
    inc %rbx
    UPRINT "mini: work "
    USYS SYS_PUT_DEC, %rbx
    UPRINT "\n"
    jmp 1b

user_fattick:
    mov $FAT_START, %rbx
1:  movq $0x5a5a5a5a, (%rbx)
    add $4096, %rbx
    cmp $FAT_END, %rbx
    jb 1b
    UPRINT "mini: touched\n"
    jmp user_tick

user_hammer:
    xor %r12d, %r12d                /* window number */
    xor %r13d, %r13d                /* queues set up */
1:  cmp $VIRTIO_SLOTS, %r12d
    jae 5f
    cmp $HAMMER_MAX, %r13d
    jae 5f
    mov %r12d, %ebx
    shl $12, %ebx
    add $VIRTIO_BASE, %ebx          /* RBX: the window (32-bit op: zero-extended) */
    mov VIO_MAGIC(%rbx), %eax
    cmp $VIRTIO_MAGIC, %eax
    jne 5f                          /* unclaimed MMIO reads all ones: no more devices */
    mov %r13d, %r15d
    shl $21, %r15d                  /* * HAMMER_REGION */
    add $HAMMER_RINGS, %r15d        /* R15: this queue's memory */
    mov VIO_DEVICE_ID(%rbx), %eax
    cmp $VIRTIO_ID_BLOCK, %eax
    je 2f
    cmp $VIRTIO_ID_NET, %eax
    je 3f
    jmp 4f                          /* the entropy device: left alone */
2:  /* Block, queue 0: header (16 bytes, type IN, sector 0, all zero already), data, status. */
    xor %r14d, %r14d
    lea 0x3000(%r15), %rax
    mov %rax, 0(%r15)
    movl $16, 8(%r15)
    movw $VRING_NEXT, 12(%r15)
    movw $1, 14(%r15)
    lea HAMMER_DATA(%r15), %rax
    mov %rax, 16(%r15)
    movl $HAMMER_DATA, 24(%r15)
    movw $(VRING_NEXT | VRING_WRITE), 28(%r15)
    movw $2, 30(%r15)
    lea 0x3100(%r15), %rax
    mov %rax, 32(%r15)
    movl $1, 40(%r15)
    movw $VRING_WRITE, 44(%r15)
    jmp 6f
3:  /* Network, transmit queue 1: the 12-byte virtio-net header (zero) and one frame to
     * 02:00:00:00:00:01 from 02:00:00:00:00:02, ethertype 0x88b5 (local experimental). */
    mov $1, %r14d
    movb $0x02, 0x300c(%r15)
    movb $0x01, 0x3011(%r15)
    movb $0x02, 0x3012(%r15)
    movb $0x02, 0x3017(%r15)
    movb $0x88, 0x3018(%r15)
    movb $0xb5, 0x3019(%r15)
    lea 0x3000(%r15), %rax
    mov %rax, 0(%r15)
    movl $(12 + HAMMER_FRAME), 8(%r15)
    movw $0, 12(%r15)
6:  call hammer_bring_up
    lea hammer_queues(%rip), %rdi
    mov %r13, %rax
    shl $5, %rax
    add %rax, %rdi
    mov %rbx, 0(%rdi)               /* window */
    mov %r15, 8(%rdi)               /* memory */
    mov %r14, 16(%rdi)              /* queue index */
    movq $0, 24(%rdi)               /* used.idx last seen */
    inc %r13d
4:  inc %r12d
    jmp 1b
5:  UPRINT "mini: hammering "
    USYS SYS_PUT_DEC, %r13
    UPRINT " queues\n"
    test %r13d, %r13d
    jnz hammer_loop
    USYS SYS_POWEROFF, $0

/* Forever: for each hammered queue whose used.idx moved, make the whole ring available again
 * and notify. */
hammer_loop:
    lea hammer_queues(%rip), %rsi
    mov %r13d, %ecx
1:  mov 0(%rsi), %rbx
    mov 8(%rsi), %r15
    movzwl 0x2002(%r15), %eax       /* used.idx */
    cmp 24(%rsi), %ax
    je 2f
    mov %ax, 24(%rsi)
    add $HAMMER_QSIZE, %eax
    mov %ax, 0x1002(%r15)           /* avail.idx = used.idx + size */
    mov 16(%rsi), %edx
    mov %edx, VIO_QUEUE_NOTIFY(%rbx)
2:  add $32, %rsi
    dec %ecx
    jnz 1b
    jmp hammer_loop

/* Brings up queue R14 of the device at RBX with its rings in R15 (descriptor 0 heads the one
 * request chain; every avail entry is 0 already), makes all HAMMER_QSIZE entries available
 * and notifies. Every step is one 32-bit MMIO access from CPL3. */
hammer_bring_up:
    movl $0, VIO_STATUS(%rbx)       /* reset */
    movl $3, VIO_STATUS(%rbx)       /* ACKNOWLEDGE | DRIVER */
    movl $1, VIO_DRV_FEAT_SEL(%rbx)
    movl $1, VIO_DRV_FEAT(%rbx)     /* VIRTIO_F_VERSION_1 (bit 32), nothing else */
    movl $0, VIO_DRV_FEAT_SEL(%rbx)
    movl $0, VIO_DRV_FEAT(%rbx)
    movl $11, VIO_STATUS(%rbx)      /* | FEATURES_OK */
    mov %r14d, VIO_QUEUE_SEL(%rbx)
    movl $HAMMER_QSIZE, VIO_QUEUE_NUM(%rbx)
    mov %r15d, VIO_QUEUE_DESC(%rbx)
    movl $0, VIO_QUEUE_DESC+4(%rbx)
    lea 0x1000(%r15), %eax
    mov %eax, VIO_QUEUE_AVAIL(%rbx)
    movl $0, VIO_QUEUE_AVAIL+4(%rbx)
    lea 0x2000(%r15), %eax
    mov %eax, VIO_QUEUE_USED(%rbx)
    movl $0, VIO_QUEUE_USED+4(%rbx)
    movl $1, VIO_QUEUE_READY(%rbx)
    movl $15, VIO_STATUS(%rbx)      /* | DRIVER_OK */
    movw $HAMMER_QSIZE, 0x1002(%r15)
    mov %r14d, VIO_QUEUE_NOTIFY(%rbx)
    ret

user_mmio:
    /* 0xe0000000 is in the 32-bit MMIO hole and no device claims it: Vessel drops writes and
     * answers reads with all ones. AND all 32-bit reads together: all ones only if every one
     * was. */
    mov $0xe0000000, %ebx
    mov $-1, %r12d
    mov $8, %r13d
1:  movl $0x12345678, (%rbx)
    mov (%rbx), %eax
    and %eax, %r12d
    movb $0x5a, 5(%rbx)
    add $8, %rbx
    dec %r13d
    jnz 1b
    mov $0xe0000000, %ebx
    mov (%rbx), %r14                /* a 64-bit read */
    movzbl 3(%rbx), %r15d           /* a byte read */
    UPRINT "mini: mmio reads=8 read32=" 
    USYS SYS_PUT_HEX, %r12
    UPRINT " read64="
    USYS SYS_PUT_HEX, %r14
    UPRINT " read8="
    USYS SYS_PUT_HEX, %r15
    UPRINT "\n"
    USYS SYS_POWEROFF, $0

user_irq:
    /* Phase 2, CPL3 with interrupts on: ask the kernel to write a byte (IF is off in the #UD
     * handler, so the interrupt stays pending until IRETQ brings us back here) and spin natively
     * until the count moves, a bounded number of times. */
    mov $IRQ_ROUNDS, %r12d
1:  mov irq_count(%rip), %rbx
    mov $SYS_UART_KICK, %eax
    ud2
    mov $1000000000, %ecx
2:  cmp irq_count(%rip), %rbx
    jne 3f
    dec %ecx
    jnz 2b
3:  dec %r12d
    jnz 1b
    mov irq_count(%rip), %rbx
    mov irq_from_user(%rip), %r13
    UPRINT "\nmini: irq count="
    USYS SYS_PUT_DEC, %rbx
    UPRINT " from_cpl3="
    USYS SYS_PUT_DEC, %r13
    UPRINT "\n"
    USYS SYS_POWEROFF, $0

user_smp:
    /* Count the enabled local APICs in the MADT: RSDP -> XSDT -> "APIC" table. */
    mov start_info(%rip), %ebx
    mov SI_RSDP(%rbx), %rsi         /* RSDP */
    mov 24(%rsi), %rsi              /* XsdtAddress */
    mov 4(%rsi), %ecx               /* XSDT length */
    lea (%rsi, %rcx), %rdx          /* end of the XSDT */
    add $36, %rsi                   /* first entry */
1:  cmp %rdx, %rsi
    jae 9f                          /* no MADT */
    mov (%rsi), %rdi
    add $8, %rsi
    cmpl $0x43495041, (%rdi)        /* "APIC" */
    jne 1b
    mov 4(%rdi), %ecx               /* MADT length */
    lea (%rdi, %rcx), %rdx          /* end of the MADT */
    add $44, %rdi                   /* first interrupt controller structure */
    xor %r14d, %r14d                /* enabled processors */
2:  cmp %rdx, %rdi
    jae 4f
    movzbl 1(%rdi), %ecx            /* length */
    test %ecx, %ecx
    jz 4f
    cmpb $0, (%rdi)                 /* type 0: processor local APIC */
    jne 3f
    testb $1, 4(%rdi)               /* flags.enabled */
    jz 3f
    inc %r14d
3:  add %rcx, %rdi
    jmp 2b
9:  xor %r14d, %r14d
    /* Wait, natively, for cpus_online to reach the MADT's count, bounded by 10^10 TSC ticks
     * (a few seconds; rdtsc is allowed at CPL3 since CR4.TSD is clear). */
4:  rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r15                  /* start */
    mov $10000000000, %r13          /* limit */
5:  mov cpus_online(%rip), %eax
    cmp %r14d, %eax
    jae 6f
    pause
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r15, %rdx
    cmp %r13, %rdx
    jb 5b
6:  mov cpus_online(%rip), %ebx
    UPRINT "mini: cpus online="
    USYS SYS_PUT_DEC, %rbx
    UPRINT " madt="
    USYS SYS_PUT_DEC, %r14
    UPRINT " mask="
    USYS SYS_PUT_HEX, cpu_mask(%rip)
    UPRINT "\n"
    USYS SYS_POWEROFF, $0

/* ---- Kernel helpers ------------------------------------------------------------------------- */

/* Drop to CPL3 at RDI, on the user stack, interrupts enabled. Never returns. */
enter_user:
    lea user_stack_top(%rip), %rsi
    push $SEL_USER_DATA             /* SS */
    push %rsi                       /* RSP */
    push $0x202                     /* RFLAGS: IF */
    push $SEL_USER_CODE             /* CS */
    push %rdi                       /* RIP */
    iretq

/* Returns EAX = 1 if the string at RSI starts with the word at RDI (followed by NUL or space). */
first_word_is:
1:  movzbl (%rdi), %eax
    test %eax, %eax
    jz 2f
    cmpb %al, (%rsi)
    jne 3f
    inc %rdi
    inc %rsi
    jmp 1b
2:  movzbl (%rsi), %eax
    test %eax, %eax
    jz 4f
    cmp $' ', %eax
    je 4f
3:  xor %eax, %eax
    ret
4:  mov $1, %eax
    ret

/* IDT entry at RDI <- interrupt gate to RAX, IST in ECX. */
set_gate:
    mov %ax, (%rdi)                 /* offset 15:0 */
    movw $SEL_CODE64, 2(%rdi)
    mov %cl, 4(%rdi)                /* IST */
    movb $0x8e, 5(%rdi)             /* present, DPL 0, 64-bit interrupt gate (clears IF) */
    shr $16, %rax
    mov %ax, 6(%rdi)                /* offset 31:16 */
    shr $16, %rax
    mov %eax, 8(%rdi)               /* offset 63:32 */
    movl $0, 12(%rdi)
    ret

/* A few thousand emulated instructions: a couple of milliseconds at CPL0 on kvm_pvm. */
short_delay:
    mov $1000, %ecx
1:  dec %ecx
    jnz 1b
    ret

/* Print the byte in DIL: wait for LSR.THRE, then write THR. Clobbers RAX, RDX. */
putc:
    mov $(COM1 + 5), %dx
1:  in %dx, %al
    test $UART_LSR_THRE, %al
    jz 1b
    mov $COM1, %dx
    mov %edi, %eax
    out %al, %dx
    ret

/* Print the NUL-terminated string at RSI. Clobbers RAX, RDX, RSI, RDI. */
puts:
1:  movzbl (%rsi), %edi
    test %edi, %edi
    jz 2f
    call putc
    inc %rsi
    jmp 1b
2:  ret

/* Print RDI in decimal. Clobbers RAX, RCX, RDX, RSI, RDI. */
put_dec:
    mov %rdi, %rax
    sub $32, %rsp
    lea 31(%rsp), %rsi
    movb $0, (%rsi)
    mov $10, %ecx
1:  xor %edx, %edx
    div %rcx
    add $'0', %dl
    dec %rsi
    mov %dl, (%rsi)
    test %rax, %rax
    jnz 1b
    call puts
    add $32, %rsp
    ret

/* Print RDI as 0x followed by hex digits, no leading zeros. Clobbers RAX, RCX, RDX, RSI, RDI. */
put_hex:
    mov %rdi, %rax
    sub $32, %rsp
    lea 31(%rsp), %rsi
    movb $0, (%rsi)
    lea hex_digits(%rip), %rcx
1:  mov %eax, %edx
    and $15, %edx
    movb (%rcx, %rdx), %dl
    dec %rsi
    mov %dl, (%rsi)
    shr $4, %rax
    jnz 1b
    dec %rsi
    movb $'x', (%rsi)
    dec %rsi
    movb $'0', (%rsi)
    call puts
    add $32, %rsp
    ret

power_off:
    mov $PM_S5, %al
    mov $PM_SLEEP_CONTROL, %dx
    out %al, %dx
halt_forever:
    cli
    hlt
    jmp halt_forever

/* Crash on purpose: with an empty IDT, ud2's #UD cannot be delivered, nor can the #GP or #DF
 * that follow, so the CPU shuts down (a triple fault) and the VMM stops the guest. */
die:
    lidt empty_idtr(%rip)
    ud2

/* ---- Interrupt and exception handlers ------------------------------------------------------- */

/* #UD. From CPL3 it is a system call (see SYS_*); from CPL0 it is a bug. */
ud_handler:
    testb $3, 8(%rsp)               /* CS of the interrupted code */
    jz ud_kernel
    addq $2, (%rsp)                 /* resume after the 2-byte ud2 */
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cmp $SYS_PUTS, %rax
    jne 1f
    mov %rdi, %rsi
    call puts
    jmp 9f
1:  cmp $SYS_PUT_DEC, %rax
    jne 2f
    call put_dec
    jmp 9f
2:  cmp $SYS_PUT_HEX, %rax
    jne 3f
    call put_hex
    jmp 9f
3:  cmp $SYS_POWEROFF, %rax
    je power_off
    cmp $SYS_UART_KICK, %rax
    jne 4f
    mov $'+', %edi
    call putc
    jmp 9f
4:  PRINT "mini: PANIC: unknown system call\n"
    jmp die
9:  pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    xor %eax, %eax
    iretq

ud_kernel:
    lea name_ud(%rip), %r13
    xor %r12d, %r12d                /* no error code */
    mov %rsp, %rbx                  /* RBX -> RIP, CS, RFLAGS, RSP, SS */
    jmp report_exception
gp_handler:
    lea name_gp(%rip), %r13
    jmp exception_with_error
pf_handler:
    lea name_pf(%rip), %r13
    jmp exception_with_error
df_handler:
    lea name_df(%rip), %r13
exception_with_error:
    mov (%rsp), %r12                /* error code */
    lea 8(%rsp), %rbx
report_exception:
    PRINT "mini: PANIC: unexpected "
    mov %r13, %rsi
    call puts
    PRINT " rip="
    mov (%rbx), %rdi
    call put_hex
    PRINT " cs="
    mov 8(%rbx), %rdi
    call put_hex
    PRINT " error="
    mov %r12, %rdi
    call put_hex
    PRINT " cr2="
    mov %cr2, %rdi
    call put_hex
    PRINT "\n"
    jmp die

/* The UART's interrupt (IOAPIC pin 4). Count it (and whether it interrupted CPL3), acknowledge
 * it at the UART by reading IIR, then at the local APIC with an EOI. */
irq_uart:
    push %rax
    push %rdx
    incq irq_count(%rip)
    testb $3, 16+8(%rsp)            /* CS of the interrupted code, above our two pushes */
    jz 1f
    incq irq_from_user(%rip)
1:  mov $(COM1 + 2), %dx
    in %dx, %al
    mov $(LAPIC_BASE + LAPIC_EOI), %eax
    movl $0, (%rax)
    pop %rdx
    pop %rax
    iretq

/* The power button's interrupt (IOAPIC pin 3): count it, EOI. */
irq_button:
    push %rax
    incq button_presses(%rip)
    mov $(LAPIC_BASE + LAPIC_EOI), %eax
    movl $0, (%rax)
    pop %rax
    iretq

/* The local APIC's spurious vector: no EOI. */
irq_spurious:
    iretq

/* ---- Read-only data ------------------------------------------------------------------------- */

    .section .rodata
hex_digits: .ascii "0123456789abcdef"
name_ud:    .asciz "#UD at cpl0"
name_gp:    .asciz "#GP"
name_pf:    .asciz "#PF"
name_df:    .asciz "#DF"

s_hello:       .asciz "hello"
s_irq:         .asciz "irq"
s_smp:         .asciz "smp"
s_reboot:      .asciz "reboot"
s_triplefault: .asciz "triplefault"
s_mmio:        .asciz "mmio"
s_fetchmmio:   .asciz "fetchmmio"
s_tick:        .asciz "tick"
s_fattick:     .asciz "fattick"
s_work:        .asciz "work"
s_button:      .asciz "button"
s_hammer:      .asciz "hammer"

    .balign 8
/* The scenario table: (name, CPL0 entry) pairs, ending with a null name. */
scenarios:
    .quad s_hello, scen_hello
    .quad s_irq, scen_irq
    .quad s_smp, scen_smp
    .quad s_reboot, scen_reboot
    .quad s_triplefault, scen_triplefault
    .quad s_mmio, scen_mmio
    .quad s_fetchmmio, scen_fetchmmio
    .quad s_tick, scen_tick
    .quad s_fattick, scen_fattick
    .quad s_work, scen_work
    .quad s_button, scen_button
    .quad s_hammer, scen_hammer
    .quad 0, 0

/* ---- Data ----------------------------------------------------------------------------------- */

    .data
    .balign 16
/* The GDT. Flat segments; in long mode only the code segments' L/D bits and DPLs matter. */
gdt:
    .quad 0                         /* 0x00: null */
    .quad 0x00af9a000000ffff        /* 0x08: kernel code, 64-bit (L=1), DPL 0 */
    .quad 0x00cf92000000ffff        /* 0x10: kernel data, DPL 0 */
    .quad 0x00cf9a000000ffff        /* 0x18: kernel code, 32-bit (D=1): for the AP trampoline */
    .quad 0x00cff2000000ffff        /* 0x20: user data, DPL 3 (selector 0x23) */
    .quad 0x00affa000000ffff        /* 0x28: user code, 64-bit, DPL 3 (selector 0x2b) */
gdt_tss:                            /* 0x30: 64-bit available TSS, 16 bytes; base set at boot */
    .word 0x67, 0                   /* limit 15:0 (104 bytes), base 15:0 */
    .byte 0, 0x89, 0, 0             /* base 23:16, present + type 9, limit 19:16/flags, base 31:24 */
    .long 0, 0                      /* base 63:32, reserved */
gdt_end:

    .balign 8
    .word 0                         /* so that the 10-byte pseudo-descriptors below are aligned */
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
    .word 0
idtr:
    .word 256 * 16 - 1
    .quad idt
    .word 0
empty_idtr:
    .word 0
    .quad 0

    .balign 8
start_info:    .quad 0              /* physical address of hvm_start_info (from EBX) */
cmdline:       .quad 0              /* physical address of the command line */
irq_count:     .quad 0              /* UART interrupts taken */
irq_from_user: .quad 0              /* ... of which interrupted CPL3 code */
button_presses: .quad 0             /* power button interrupts taken */
cpu_mask:      .quad 0              /* bit n: APIC ID n is up */
cpus_online:   .long 1              /* the BSP, plus one per AP that checked in */
    .balign 8
hammer_queues: .fill HAMMER_MAX * 32, 1, 0  /* hammer: (window, memory, queue, last used.idx) */

/* Identity page tables for 0-4 GiB with 2 MiB pages. Every level has U/S=1 so CPL3 code can
 * reach everything (this guest does not protect itself from its own user code). The top GiB,
 * the MMIO hole, is mapped with PCD|PWT (uncached). */
#define PTE_P   0x01
#define PTE_RW  0x02
#define PTE_US  0x04
#define PTE_PWT 0x08
#define PTE_PCD 0x10
#define PTE_PS  0x80
    .balign 4096
pml4:
    .quad pdpt + (PTE_P | PTE_RW | PTE_US)
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + (PTE_P | PTE_RW | PTE_US)
    .quad pd + 0x1000 + (PTE_P | PTE_RW | PTE_US)
    .quad pd + 0x2000 + (PTE_P | PTE_RW | PTE_US)
    .quad pd + 0x3000 + (PTE_P | PTE_RW | PTE_US)
    .fill 508, 8, 0
pd:                                 /* four page directories, 2048 entries of 2 MiB */
    .set addr, 0
    .rept 2048
    .if addr >= 0xc0000000
    .quad addr | (PTE_P | PTE_RW | PTE_US | PTE_PS | PTE_PWT | PTE_PCD)
    .else
    .quad addr | (PTE_P | PTE_RW | PTE_US | PTE_PS)
    .endif
    .set addr, addr + 0x200000
    .endr

/* ---- Zeroed data ---------------------------------------------------------------------------- */

    .bss
    .balign 4096
idt:            .fill 256 * 16, 1, 0
tss:            .fill 104, 1, 0
    .balign 16
                .fill 4096, 1, 0
boot_stack_top:
                .fill 4096, 1, 0
trap_stack_top:                     /* TSS.RSP0 */
                .fill 1024, 1, 0
df_stack_top:                       /* TSS.IST1 */
                .fill 4096, 1, 0
user_stack_top:
