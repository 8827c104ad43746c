//! The pod cgroup's limits from a pod's CRI resources (KEP-1287 in-place
//! pod resize): `resources` is the sum of the containers' resources and
//! `overhead` what the sandbox itself costs, so the pod cgroup gets their
//! sum. Pure: the arithmetic is unit-tested here, the writes are
//! `cgroups::Cgroups::apply`'s.

use std::collections::BTreeMap;

use k8s_cri::v1::{HugepageLimit, LinuxContainerResources};

use crate::cgroups::UNLIMITED;

/// The kernel's default CFS period, used to add quotas given over
/// different periods.
const DEFAULT_PERIOD: i64 = 100_000;

/// The kernel's ceiling for v1 `cpu.shares`.
const MAX_SHARES: i64 = 262_144;

/// The pod cgroup's limits for `resources` plus `overhead`.
///
/// `resources` describes the whole pod (kubelet sends the full pod-level
/// figures, not a change), so a CPU quota or memory limit it leaves 0 means
/// the pod has none: the limit is lifted ([`UNLIMITED`]) rather than kept,
/// unlike UpdateContainerResources where 0 leaves a field alone. Overhead
/// adds to a limit only where the containers have one (a pod without a
/// CPU limit is not capped by its sandbox's overhead). Shares, hugepage
/// limits and memory+swap add up; cpusets and `unified` entries are the
/// containers' (overhead's where the containers name none).
pub fn pod_limits(
    resources: &LinuxContainerResources,
    overhead: &LinuxContainerResources,
) -> LinuxContainerResources {
    let (r, o) = (resources, overhead);
    let mut out = LinuxContainerResources::default();
    let shares = r.cpu_shares.max(0) + o.cpu_shares.max(0);
    if shares > 0 {
        out.cpu_shares = shares.min(MAX_SHARES);
    }
    if r.cpu_quota > 0 {
        let period = period_of(r);
        let extra = if o.cpu_quota > 0 {
            // Overhead's quota over the containers' period.
            i64::try_from(i128::from(o.cpu_quota) * i128::from(period) / i128::from(period_of(o)))
                .unwrap_or(i64::MAX)
        } else {
            0
        };
        out.cpu_quota = r.cpu_quota.saturating_add(extra);
        out.cpu_period = period;
    } else {
        out.cpu_quota = UNLIMITED;
        out.cpu_period = r.cpu_period;
    }
    out.memory_limit_in_bytes = if r.memory_limit_in_bytes > 0 {
        r.memory_limit_in_bytes
            .saturating_add(o.memory_limit_in_bytes.max(0))
    } else {
        UNLIMITED
    };
    out.memory_swap_limit_in_bytes = match r.memory_swap_limit_in_bytes {
        s if s > 0 => {
            // Memory+swap: the overhead's own memory+swap, else its memory.
            let extra = if o.memory_swap_limit_in_bytes > 0 {
                o.memory_swap_limit_in_bytes
            } else {
                o.memory_limit_in_bytes.max(0)
            };
            s.saturating_add(extra)
        }
        s => s,
    };
    let mut pages: BTreeMap<&str, u64> = BTreeMap::new();
    for h in r.hugepage_limits.iter().chain(&o.hugepage_limits) {
        let sum = pages.entry(&h.page_size).or_default();
        *sum = sum.saturating_add(h.limit);
    }
    out.hugepage_limits = pages
        .into_iter()
        .map(|(page_size, limit)| HugepageLimit {
            page_size: page_size.to_string(),
            limit,
        })
        .collect();
    for (mine, rs, os) in [
        (&mut out.cpuset_cpus, &r.cpuset_cpus, &o.cpuset_cpus),
        (&mut out.cpuset_mems, &r.cpuset_mems, &o.cpuset_mems),
    ] {
        *mine = if rs.is_empty() {
            os.clone()
        } else {
            rs.clone()
        };
    }
    out.unified = o.unified.clone();
    out.unified
        .extend(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn period_of(r: &LinuxContainerResources) -> i64 {
    if r.cpu_period > 0 {
        r.cpu_period
    } else {
        DEFAULT_PERIOD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(shares: i64, quota: i64, period: i64, memory: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_shares: shares,
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn resources_and_overhead_add_up() {
        let l = pod_limits(
            &res(512, 50_000, 100_000, 256 << 20),
            &res(102, 10_000, 0, 32 << 20),
        );
        assert_eq!(l.cpu_shares, 614);
        assert_eq!((l.cpu_quota, l.cpu_period), (60_000, 100_000));
        assert_eq!(l.memory_limit_in_bytes, 288 << 20);
        // Overhead given over another period is rescaled to the containers'.
        let l = pod_limits(&res(0, 25_000, 50_000, 0), &res(0, 20_000, 200_000, 0));
        assert_eq!((l.cpu_quota, l.cpu_period), (30_000, 50_000));
        assert_eq!(l.cpu_shares, 0);
    }

    #[test]
    fn no_container_limit_means_no_pod_limit() {
        let l = pod_limits(&res(1024, 0, 0, 0), &res(100, 10_000, 100_000, 64 << 20));
        assert_eq!(l.cpu_quota, UNLIMITED);
        assert_eq!(l.memory_limit_in_bytes, UNLIMITED);
        assert_eq!(l.cpu_shares, 1124);
        let l = pod_limits(
            &res(0, UNLIMITED, 0, 0),
            &LinuxContainerResources::default(),
        );
        assert_eq!(l.cpu_quota, UNLIMITED);
    }

    #[test]
    fn swap_hugepages_cpusets_and_unified() {
        let mut r = res(0, 0, 0, 100);
        r.memory_swap_limit_in_bytes = 200;
        r.hugepage_limits = vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 4,
        }];
        r.unified.insert("memory.high".into(), "90".into());
        let mut o = res(0, 0, 0, 10);
        o.hugepage_limits = vec![
            HugepageLimit {
                page_size: "2MB".into(),
                limit: 2,
            },
            HugepageLimit {
                page_size: "1GB".into(),
                limit: 1,
            },
        ];
        o.cpuset_cpus = "0".into();
        o.unified.insert("memory.high".into(), "5".into());
        o.unified.insert("pids.max".into(), "10".into());
        let l = pod_limits(&r, &o);
        assert_eq!(l.memory_limit_in_bytes, 110);
        assert_eq!(l.memory_swap_limit_in_bytes, 210);
        let pages: Vec<_> = l
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.as_str(), h.limit))
            .collect();
        assert_eq!(pages, [("1GB", 1), ("2MB", 6)]);
        assert_eq!(l.cpuset_cpus, "0");
        assert_eq!(l.unified["memory.high"], "90");
        assert_eq!(l.unified["pids.max"], "10");
        r.memory_swap_limit_in_bytes = -1;
        assert_eq!(pod_limits(&r, &o).memory_swap_limit_in_bytes, -1);
    }

    #[test]
    fn shares_stay_within_the_kernel_range() {
        let l = pod_limits(&res(262_144, 0, 0, 0), &res(1000, 0, 0, 0));
        assert_eq!(l.cpu_shares, MAX_SHARES);
    }
}
