//! The container process as Kubernetes defines it from the CRI request and
//! the image config: which command runs, with which environment, as which
//! user and groups. Pure functions, so every rule is unit-tested.

use crate::image::record::RunConfig;

/// Why no process can be derived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    /// Neither the container's `command`/`args` nor the image's ENTRYPOINT/CMD yield a program to
    /// run.
    #[error("no command specified: neither the container nor the image gives one")]
    NoCommand,
    /// A user name (from `run_as_username` or the image's USER) has no entry in the image's
    /// /etc/passwd.
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    /// A group name in the image's USER (`user:group`) has no entry in the image's /etc/group.
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    /// An id that does not fit a `u32` (e.g. a negative `run_as_user`).
    #[error("invalid {what} {value}")]
    Invalid {
        /// Which id: `run_as_user`, `run_as_group` or `supplemental group`.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// `run_as_group` without a user: refused (as containerd and CRI-O do) rather than paired with
    /// the image's user.
    #[error("run_as_group is set without run_as_user or run_as_username")]
    GroupWithoutUser,
}

/// Kubernetes' rule: `command` replaces the image ENTRYPOINT (and drops its
/// CMD), `args` replaces CMD.
pub fn command(
    image: &RunConfig,
    cri_command: &[String],
    cri_args: &[String],
) -> Result<Vec<String>, ProcessError> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv: Vec<String> = match (cri_command.is_empty(), cri_args.is_empty()) {
        (false, _) => cri_command.iter().chain(cri_args).cloned().collect(),
        (true, false) => entrypoint
            .into_iter()
            .chain(cri_args.iter().cloned())
            .collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    };
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(ProcessError::NoCommand);
    }
    Ok(argv)
}

/// The image's environment, then the container's; a later value of the
/// same name replaces the earlier one in place.
pub fn environment(image: &RunConfig, cri_env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let name = entry.split('=').next().unwrap_or("").to_string();
        match out
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    };
    for e in image.env.clone().unwrap_or_default() {
        set(e);
    }
    for (k, v) in cri_env {
        set(format!("{k}={v}"));
    }
    out
}

/// How supplementary groups are chosen (`SupplementalGroupsPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupsPolicy {
    /// The user's groups from the image's /etc/group, plus the requested ones.
    #[default]
    Merge,
    /// Only the requested groups (and the primary group).
    Strict,
}

/// The user-related parts of the CRI security context.
#[derive(Debug, Clone, Default)]
pub struct UserRequest {
    /// CRI `run_as_user`: a numeric uid that overrides the image's USER.
    pub run_as_user: Option<i64>,
    /// CRI `run_as_username`: looked up in the image's /etc/passwd; empty when unset.
    pub run_as_username: String,
    /// CRI `run_as_group`: primary gid; needs `run_as_user` or `run_as_username`.
    pub run_as_group: Option<i64>,
    /// CRI `supplemental_groups`, added to whatever `policy` yields.
    pub supplemental_groups: Vec<i64>,
    /// Whether the image's /etc/group memberships are merged in.
    pub policy: GroupsPolicy,
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id the process runs as.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, each once: `gid` first (as cri-o sets
    /// them, so ContainerStatus's `supplemental_groups` are exactly what
    /// getgroups(2) returns in the container), then the image's groups of
    /// the user (Merge), then the requested ones.
    pub additional_gids: Vec<u32>,
    /// From /etc/passwd, else `/`: the default HOME.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

fn id(what: &'static str, v: i64) -> Result<u32, ProcessError> {
    u32::try_from(v).map_err(|_| ProcessError::Invalid {
        what,
        value: v.to_string(),
    })
}

/// Resolves the user: the request's `run_as_user`/`run_as_username` win over
/// the image's USER (`uid`, `name`, `uid:gid`, `name:group`); names are
/// looked up in the image's /etc/passwd and /etc/group (given as text,
/// empty when the image has none).
pub fn resolve_user(
    req: &UserRequest,
    image_user: &str,
    passwd: &str,
    group: &str,
) -> Result<User, ProcessError> {
    let (image_name, image_group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    // As containerd and cri-o: a group alone would silently combine with
    // whatever user the image names.
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        return Err(ProcessError::GroupWithoutUser);
    }
    let by_name = |n: &str| passwd_entries(passwd).find(|e| e.name == n);
    let by_uid = |u: u32| passwd_entries(passwd).find(|e| e.uid == u);

    let (uid, entry) = if let Some(u) = req.run_as_user {
        let uid = id("run_as_user", u)?;
        (uid, by_uid(uid))
    } else if !req.run_as_username.is_empty() {
        let e = by_name(&req.run_as_username)
            .ok_or_else(|| ProcessError::UnknownUser(req.run_as_username.clone()))?;
        (e.uid, Some(e))
    } else if image_name.is_empty() {
        (0, by_uid(0))
    } else if let Ok(u) = image_name.parse::<u32>() {
        (u, by_uid(u))
    } else {
        let e = by_name(image_name).ok_or_else(|| ProcessError::UnknownUser(image_name.into()))?;
        (e.uid, Some(e))
    };

    // The image's group part applies only when the image's user does.
    let image_applies = req.run_as_user.is_none() && req.run_as_username.is_empty();
    let gid = if let Some(g) = req.run_as_group {
        id("run_as_group", g)?
    } else if let (true, Some(g)) = (image_applies, image_group) {
        match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| ProcessError::UnknownGroup(g.into()))?,
        }
    } else {
        entry.as_ref().map(|e| e.gid).unwrap_or(0)
    };

    let mut additional: Vec<u32> = vec![gid];
    if req.policy == GroupsPolicy::Merge
        && let Some(e) = &entry
    {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !additional.contains(&g) {
                additional.push(g);
            }
        }
    }
    for g in &req.supplemental_groups {
        let g = id("supplemental group", *g)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
        home: entry
            .map(|e| e.home)
            .filter(|h| !h.is_empty())
            .unwrap_or("/")
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> RunConfig {
        RunConfig {
            entrypoint: (!entrypoint.is_empty()).then(|| s(entrypoint)),
            cmd: (!cmd.is_empty()).then(|| s(cmd)),
            env: Some(s(&["PATH=/bin", "A=image"])),
            ..Default::default()
        }
    }

    #[test]
    fn command_follows_kubernetes() {
        let img = image(&["/entry"], &["default"]);
        assert_eq!(command(&img, &[], &[]).unwrap(), s(&["/entry", "default"]));
        assert_eq!(command(&img, &[], &s(&["x"])).unwrap(), s(&["/entry", "x"]));
        assert_eq!(
            command(&img, &s(&["/bin/sh"]), &[]).unwrap(),
            s(&["/bin/sh"])
        );
        assert_eq!(
            command(&img, &s(&["/bin/sh"]), &s(&["-c", "true"])).unwrap(),
            s(&["/bin/sh", "-c", "true"])
        );
        assert_eq!(command(&image(&[], &["sh"]), &[], &[]).unwrap(), s(&["sh"]));
        assert_eq!(
            command(&image(&[], &[]), &[], &[]),
            Err(ProcessError::NoCommand)
        );
    }

    #[test]
    fn environment_overrides_in_place() {
        let env = environment(
            &image(&[], &[]),
            &[("A".into(), "cri".into()), ("B".into(), "x=y".into())],
        );
        assert_eq!(env, s(&["PATH=/bin", "A=cri", "B=x=y"]));
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        default-user:x:1000:1000::/home/default:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\n\
        group-defined-in-image:x:50000:default-user\nother:x:60000:root,default-user\n";

    fn user(req: UserRequest, image_user: &str) -> Result<User, ProcessError> {
        resolve_user(&req, image_user, PASSWD, GROUP)
    }

    #[test]
    fn image_user_forms() {
        let u = user(UserRequest::default(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = user(UserRequest::default(), "www-data").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (33, 33, "/var/www"));
        let u = user(UserRequest::default(), "1002").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1002, 0, "/"));
        let u = user(UserRequest::default(), "1003:1003").unwrap();
        assert_eq!((u.uid, u.gid), (1003, 1003));
        let u = user(UserRequest::default(), "www-data:www-data").unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        assert_eq!(
            user(UserRequest::default(), "nobody"),
            Err(ProcessError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            user(UserRequest::default(), "0:nogroup"),
            Err(ProcessError::UnknownGroup("nogroup".into()))
        );
    }

    #[test]
    fn request_wins_over_image() {
        let req = UserRequest {
            run_as_user: Some(1000),
            run_as_group: Some(2000),
            ..Default::default()
        };
        let u = user(req, "www-data:www-data").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let req = UserRequest {
            run_as_username: "www-data".into(),
            ..Default::default()
        };
        assert_eq!(user(req, "1002:1003").unwrap().gid, 33);
        let group_only = UserRequest {
            run_as_group: Some(2000),
            ..Default::default()
        };
        assert_eq!(
            user(group_only, "www-data"),
            Err(ProcessError::GroupWithoutUser)
        );
        let bad = UserRequest {
            run_as_user: Some(-1),
            ..Default::default()
        };
        assert!(matches!(user(bad, ""), Err(ProcessError::Invalid { .. })));
    }

    #[test]
    fn supplemental_groups_merge_or_strict() {
        let merge = UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234, 50000],
            ..Default::default()
        };
        assert_eq!(
            user(merge.clone(), "").unwrap().additional_gids,
            vec![1000, 50000, 60000, 1234]
        );
        let strict = UserRequest {
            policy: GroupsPolicy::Strict,
            ..merge
        };
        assert_eq!(
            user(strict, "").unwrap().additional_gids,
            vec![1000, 1234, 50000]
        );
        // critest's case: the primary group, the requested one, and (Merge
        // only) the image's group of the user.
        let one = |policy| UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234],
            policy,
            ..Default::default()
        };
        let mut merged = user(one(GroupsPolicy::Merge), "").unwrap().additional_gids;
        merged.sort();
        assert_eq!(merged, vec![1000, 1234, 50000, 60000]);
        let mut strict = user(one(GroupsPolicy::Strict), "").unwrap().additional_gids;
        strict.sort();
        assert_eq!(strict, vec![1000, 1234]);
        let root = user(UserRequest::default(), "").unwrap();
        assert_eq!(root.additional_gids, vec![0, 60000]);
    }
}
