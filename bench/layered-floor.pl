#!/usr/bin/perl
# The cheapest layered run of a plan's steps, the builder bench's layered
# floor: what any builder that gives each step an overlay of its stack must
# do, and nothing else. JOBS processes share the steps; for each, a fresh
# upper and work directory, an overlay of its lowers (mount(2), volatile, as
# day11 mounts it), `crun run` forked and waited for, the unmount, and the
# upper renamed aside (a commit at its least: no metadata, no fsync). Perl
# is in every Debian (perl-base), forks cheaply and makes system calls
# directly, so the floor pays for no helper process.
#
# usage: layered-floor.pl WORK ROOTFS LOWERS JOBS DEPTHS SYS_MOUNT SYS_UMOUNT2
#   WORK/jobN/config.json  the bundle of job N (root.path WORK/jobN/merged)
#   LOWERS/l1 .. l16       lower directories; a step of depth d mounts l1..ld over ROOTFS
#   DEPTHS                 a file with one depth per line, one line per step
use strict;
use warnings;

my ($work, $rootfs, $lowers, $jobs, $depths_file, $sys_mount, $sys_umount2) = @ARGV;
die "usage: $0 WORK ROOTFS LOWERS JOBS DEPTHS SYS_MOUNT SYS_UMOUNT2\n" unless defined $sys_umount2;
open(my $in, '<', $depths_file) or die "$depths_file: $!\n";
chomp(my @depths = <$in>);
close($in);

my @children;
for my $job (0 .. $jobs - 1) {
  my $pid = fork() // die "fork: $!\n";
  if ($pid == 0) {
    run_steps($job);
    exit(0);
  }
  push(@children, $pid);
}
my $failed = 0;
for my $pid (@children) {
  waitpid($pid, 0);
  $failed ||= $?;
}
exit($failed ? 1 : 0);

sub run_steps {
  my ($job) = @_;
  my $dir = "$work/job$job";
  my $merged = "$dir/merged";
  for (my $i = $job; $i < @depths; $i += $jobs) {
    my ($upper, $workdir) = ("$dir/upper-$i", "$dir/work-$i");
    mkdir($upper) or die "mkdir $upper: $!\n";
    mkdir($workdir) or die "mkdir $workdir: $!\n";
    my $lowerdir = join(':', (map { "$lowers/l$_" } 1 .. $depths[$i]), $rootfs);
    my $options = "lowerdir=$lowerdir,upperdir=$upper,workdir=$workdir,volatile";
    # syscall(2) passes strings as buffers it may write: each is a variable of its own.
    my ($source, $target, $fstype) = ('overlay', $merged, 'overlay');
    syscall($sys_mount, $source, $target, $fstype, 0, $options) == 0
      or die "mount $merged: $!\n";
    my $child = fork() // die "fork: $!\n";
    if ($child == 0) {
      open(STDOUT, '>', '/dev/null') or die "stdout: $!\n";
      exec('crun', 'run', '--bundle', $dir, "day11-floor-$$-$i") or die "exec crun: $!\n";
    }
    waitpid($child, 0);
    die "crun run exited with $?\n" if $?;
    syscall($sys_umount2, $target, 0) == 0 or die "umount $merged: $!\n";
    rename($upper, "$dir/done-$i") or die "rename $upper: $!\n";
  }
}
