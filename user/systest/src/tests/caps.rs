//! Capabilities: identify, derive, badges, delete, revoke, grant, delegate,
//! capability spaces, and stale, forged and mistyped tokens.

use super::{root, stale};
use crate::harness::{Ctx, TestResult};
use keel_abi::Error;
use keel_abi::cap::{
    CapToken, GENERATION_SHIFT, MAX_INDEX, NO_BADGE, ObjectType, Rights, TYPE_SHIFT,
};
use keel_rt::syscall::{
    cap_delegate, cap_delete, cap_derive, cap_derive_raw, cap_grant, cap_identify, cap_revoke,
    cap_revoke_step, cap_space_create, mem_create, pool_available, thread_resume,
};

/// Rights of `cap` as `CapIdentify` reports them.
fn rights_of(cap: CapToken) -> Result<Rights, Error> {
    cap_identify(cap).map(|i| Rights::from_bits(i.rights_bits).unwrap_or(Rights::NONE))
}

pub fn identify_root_caps() -> TestResult {
    let r = root()?;
    let expect = [
        (r.pool, ObjectType::MemoryPool),
        (r.boot_image, ObjectType::MemoryObject),
        (r.aspace, ObjectType::AddressSpace),
        (r.cspace, ObjectType::CapSpace),
        (r.thread, ObjectType::Thread),
    ];
    for (cap, ty) in expect {
        let id = cap_identify(cap).ctx("identify")?;
        ensure_eq!(id.object_type(), Some(ty));
        ensure!(
            id.rights().is_some(),
            "undefined rights bits {:#x}",
            id.rights_bits
        );
    }
    for cap in [r.pool, r.aspace, r.cspace, r.thread] {
        ensure_eq!(rights_of(cap), Ok(Rights::ALL), "{cap:?}");
    }
    let image = rights_of(r.boot_image).ctx("identify boot image")?;
    // Readable and executable (its pages can be mapped to run them), never
    // writable.
    ensure_eq!(image, Rights::READ | Rights::EXECUTE | Rights::GRANT);
    Ok(())
}

pub fn derive_with_fewer_rights() -> TestResult {
    let r = root()?;
    let child = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure!(child != r.pool);
    ensure_eq!(child.object_type(), Some(ObjectType::MemoryPool));
    let id = cap_identify(child).ctx("identify")?;
    ensure_eq!(id.object_type(), Some(ObjectType::MemoryPool));
    ensure_eq!(id.rights(), Some(Rights::READ));
    // The child works for what its rights allow, and only that.
    ensure!(pool_available(child).is_ok());
    ensure_eq!(mem_create(child, 1, 0), Err(Error::AccessDenied));
    // No rights at all is a valid (if useless) capability.
    let none = cap_derive(r.pool, Rights::NONE, NO_BADGE).ctx("derive none")?;
    ensure_eq!(rights_of(none), Ok(Rights::NONE));
    ensure_eq!(pool_available(none), Err(Error::AccessDenied));
    cap_delete(none).ctx("delete none")?;
    cap_delete(child).ctx("delete")?;
    Ok(())
}

pub fn derive_with_more_rights_is_refused() -> TestResult {
    let r = root()?;
    let child = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure_eq!(
        cap_derive(child, Rights::READ | Rights::WRITE, NO_BADGE),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        cap_derive(child, Rights::ALL, NO_BADGE),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        cap_derive(r.boot_image, Rights::READ | Rights::WRITE, NO_BADGE),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        cap_derive(r.boot_image, Rights::READ | Rights::REVOKE, NO_BADGE),
        Err(Error::AccessDenied)
    );
    cap_delete(child).ctx("delete")?;
    Ok(())
}

pub fn derive_rejects_undefined_rights() -> TestResult {
    let r = root()?;
    for bits in [0x40, 0x7f, 0x8000_0000, 1 << 32, usize::MAX] {
        ensure_eq!(
            cap_derive_raw(r.pool, bits, 0),
            Err(Error::InvalidArgument),
            "rights {bits:#x}"
        );
    }
    Ok(())
}

pub fn badge_is_set_once() -> TestResult {
    let r = root()?;
    let badged = cap_derive(r.pool, Rights::READ | Rights::WRITE, 42).ctx("derive badged")?;
    ensure_eq!(
        cap_derive(badged, Rights::READ, 43),
        Err(Error::InvalidState)
    );
    // Without a new badge the child inherits the badge; that is allowed.
    let child = cap_derive(badged, Rights::READ, NO_BADGE).ctx("derive from badged")?;
    ensure_eq!(rights_of(child), Ok(Rights::READ));
    cap_delete(child).ctx("delete child")?;
    cap_delete(badged).ctx("delete badged")?;
    Ok(())
}

pub fn delete_makes_token_stale() -> TestResult {
    let r = root()?;
    let c = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    cap_delete(c).ctx("delete")?;
    ensure_eq!(cap_identify(c).map(|_| ()), Err(Error::InvalidCapability));
    ensure_eq!(cap_delete(c), Err(Error::InvalidCapability));
    ensure_eq!(pool_available(c), Err(Error::InvalidCapability));
    // The slot may be reused; the old token still names nothing.
    let again = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive again")?;
    ensure!(again != c, "a reused slot must get a new generation");
    ensure_eq!(cap_identify(c).map(|_| ()), Err(Error::InvalidCapability));
    cap_delete(again).ctx("delete again")?;
    Ok(())
}

pub fn delete_keeps_children() -> TestResult {
    let r = root()?;
    let parent = cap_derive(r.pool, Rights::ALL, NO_BADGE).ctx("derive parent")?;
    let child = cap_derive(parent, Rights::READ, NO_BADGE).ctx("derive child")?;
    cap_delete(parent).ctx("delete parent")?;
    ensure_eq!(rights_of(child), Ok(Rights::READ));
    ensure!(pool_available(child).is_ok());
    cap_delete(child).ctx("delete child")?;
    Ok(())
}

pub fn revoke_destroys_descendants() -> TestResult {
    let r = root()?;
    let parent = cap_derive(r.pool, Rights::ALL, NO_BADGE).ctx("derive parent")?;
    let child = cap_derive(parent, Rights::READ | Rights::WRITE, NO_BADGE).ctx("derive child")?;
    let grandchild = cap_derive(child, Rights::READ, NO_BADGE).ctx("derive grandchild")?;
    let sibling = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive sibling")?;
    cap_revoke(parent).ctx("revoke")?;
    ensure_eq!(
        cap_identify(child).map(|_| ()),
        Err(Error::InvalidCapability)
    );
    ensure_eq!(
        cap_identify(grandchild).map(|_| ()),
        Err(Error::InvalidCapability)
    );
    // The revoked capability itself and unrelated ones survive.
    ensure_eq!(rights_of(parent), Ok(Rights::ALL));
    ensure_eq!(rights_of(sibling), Ok(Rights::READ));
    // Revoking with nothing left to revoke is done at once.
    ensure_eq!(cap_revoke_step(parent), Ok(true));
    cap_delete(sibling).ctx("delete sibling")?;
    cap_delete(parent).ctx("delete parent")?;
    Ok(())
}

pub fn revoke_needs_revoke_right() -> TestResult {
    let r = root()?;
    let c = cap_derive(r.pool, Rights::ALL.without(Rights::REVOKE), NO_BADGE).ctx("derive")?;
    ensure_eq!(cap_revoke_step(c), Err(Error::AccessDenied));
    cap_delete(c).ctx("delete")?;
    Ok(())
}

pub fn forged_tokens_are_refused() -> TestResult {
    let r = root()?;
    let pool = r.pool.raw();
    let type_mask = 0xffu64 << TYPE_SHIFT;
    let forged = [
        CapToken::NULL,
        stale(r.pool),
        CapToken::from_raw(pool ^ (0x8000_0000 << GENERATION_SHIFT)),
        // Same slot, another type.
        CapToken::from_raw((pool & !type_mask) | ((ObjectType::Endpoint as u64) << TYPE_SHIFT)),
        CapToken::from_raw((pool & !type_mask) | (0xff << TYPE_SHIFT)),
        CapToken::new(MAX_INDEX, 0, ObjectType::MemoryPool),
        CapToken::new(4095, 0, ObjectType::MemoryPool),
        CapToken::from_raw(u64::MAX),
    ];
    for t in forged {
        ensure_eq!(
            cap_identify(t).map(|_| ()),
            Err(Error::InvalidCapability),
            "{t:?}"
        );
        ensure_eq!(cap_delete(t), Err(Error::InvalidCapability), "{t:?}");
        ensure!(
            cap_derive(t, Rights::READ, NO_BADGE).is_err(),
            "derive from {t:?}"
        );
    }
    // A call that needs a pool: a pool-typed forged token is invalid, a
    // token of another type is the wrong type.
    ensure_eq!(pool_available(stale(r.pool)), Err(Error::InvalidCapability));
    ensure_eq!(
        pool_available(CapToken::new(MAX_INDEX, 0, ObjectType::MemoryPool)),
        Err(Error::InvalidCapability)
    );
    ensure_eq!(pool_available(CapToken::NULL), Err(Error::WrongObjectType));
    Ok(())
}

pub fn wrong_object_type_is_refused() -> TestResult {
    let r = root()?;
    ensure_eq!(mem_create(r.aspace, 1, 0), Err(Error::WrongObjectType));
    ensure_eq!(pool_available(r.thread), Err(Error::WrongObjectType));
    ensure_eq!(thread_resume(r.pool), Err(Error::WrongObjectType));
    ensure_eq!(cap_space_create(r.cspace, 4), Err(Error::WrongObjectType));
    ensure_eq!(
        cap_grant(r.pool, r.aspace, Rights::READ),
        Err(Error::WrongObjectType)
    );
    Ok(())
}

pub fn cap_space_create_checks_arguments() -> TestResult {
    let r = root()?;
    let cs = cap_space_create(r.pool, 16).ctx("create")?;
    ensure_eq!(cs.object_type(), Some(ObjectType::CapSpace));
    ensure_eq!(
        cap_identify(cs).map(|i| i.object_type()),
        Ok(Some(ObjectType::CapSpace))
    );
    cap_delete(cs).ctx("delete")?;
    ensure_eq!(cap_space_create(r.pool, 0), Err(Error::InvalidArgument));
    ensure_eq!(cap_space_create(r.pool, 65537), Err(Error::InvalidArgument));
    ensure_eq!(
        cap_space_create(r.pool, usize::MAX),
        Err(Error::InvalidArgument)
    );
    let ro = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure_eq!(cap_space_create(ro, 4), Err(Error::AccessDenied));
    cap_delete(ro).ctx("delete ro")?;
    Ok(())
}

pub fn grant_copies_into_another_space() -> TestResult {
    let r = root()?;
    let cs = cap_space_create(r.pool, 16).ctx("create")?;
    let src_rights = Rights::READ | Rights::GRANT | Rights::REVOKE;
    let src = cap_derive(r.pool, src_rights, NO_BADGE).ctx("derive")?;
    let granted = cap_grant(src, cs, Rights::READ).ctx("grant")?;
    ensure_eq!(granted.object_type(), Some(ObjectType::MemoryPool));
    // The source stays.
    ensure_eq!(rights_of(src), Ok(src_rights));
    // More rights than the source: refused.
    ensure_eq!(
        cap_grant(src, cs, Rights::READ | Rights::WRITE),
        Err(Error::AccessDenied)
    );
    // Without GRANT: refused.
    let no_grant = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive no grant")?;
    ensure_eq!(
        cap_grant(no_grant, cs, Rights::READ),
        Err(Error::AccessDenied)
    );
    // Into a capability space we may not write: refused.
    let cs_ro = cap_derive(cs, Rights::READ, NO_BADGE).ctx("derive cspace")?;
    ensure_eq!(
        cap_grant(src, cs_ro, Rights::READ),
        Err(Error::AccessDenied)
    );
    // Revoking the source reaches the granted copy in the other space too;
    // from here we can only check that it succeeds.
    cap_revoke(src).ctx("revoke")?;
    for c in [cs_ro, no_grant, src, cs] {
        cap_delete(c).ctx("delete")?;
    }
    Ok(())
}

pub fn grant_into_full_space_fails() -> TestResult {
    let r = root()?;
    let cs = cap_space_create(r.pool, 1).ctx("create")?;
    let src = cap_derive(r.pool, Rights::READ | Rights::GRANT, NO_BADGE).ctx("derive")?;
    cap_grant(src, cs, Rights::READ).ctx("first grant")?;
    ensure_eq!(cap_grant(src, cs, Rights::READ), Err(Error::OutOfMemory));
    cap_delete(src).ctx("delete src")?;
    cap_delete(cs).ctx("delete cs")?;
    Ok(())
}

pub fn delegate_moves_the_capability() -> TestResult {
    let r = root()?;
    let cs = cap_space_create(r.pool, 16).ctx("create")?;
    let c = cap_derive(r.pool, Rights::READ | Rights::GRANT, NO_BADGE).ctx("derive")?;
    let moved = cap_delegate(c, cs).ctx("delegate")?;
    ensure_eq!(moved.object_type(), Some(ObjectType::MemoryPool));
    ensure_eq!(cap_identify(c).map(|_| ()), Err(Error::InvalidCapability));
    let no_grant = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive no grant")?;
    ensure_eq!(cap_delegate(no_grant, cs), Err(Error::AccessDenied));
    ensure_eq!(rights_of(no_grant), Ok(Rights::READ));
    ensure_eq!(cap_delegate(no_grant, r.pool), Err(Error::WrongObjectType));
    cap_delete(no_grant).ctx("delete")?;
    cap_delete(cs).ctx("delete cs")?;
    Ok(())
}

/// A capability space is charged to the pool and freed, with everything
/// only it held, when its last capability goes; a space cannot hold a
/// capability to itself.
pub fn cap_space_freed_with_its_last_capability() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let cs = cap_space_create(r.pool, 128).ctx("create")?;
    let charged = before - pool_available(r.pool).ctx("pool after create")?;
    ensure!(
        charged > 0,
        "creating a capability space is charged to the pool"
    );
    // A memory object that only the new space will hold.
    let mem = mem_create(r.pool, 4, 0).ctx("mem")?;
    cap_grant(mem, cs, Rights::READ).ctx("grant mem")?;
    cap_delete(mem).ctx("delete root's mem cap")?;
    // A space cannot hold a capability to itself.
    let self_cap = cap_derive(cs, Rights::ALL, NO_BADGE).ctx("derive cspace cap")?;
    ensure_eq!(
        cap_grant(self_cap, cs, Rights::READ),
        Err(Error::InvalidArgument)
    );
    ensure_eq!(cap_delegate(self_cap, cs), Err(Error::InvalidArgument));
    cap_delete(self_cap).ctx("delete derived cspace cap")?;
    // The memory object still exists (the space holds it): its 4 pages are
    // still charged.
    ensure_eq!(
        pool_available(r.pool).ctx("pool while held")?,
        before - charged - 4
    );
    cap_delete(cs).ctx("delete the last cspace cap")?;
    ensure_eq!(
        pool_available(r.pool).ctx("pool after")?,
        before,
        "the space and the object it held were freed"
    );
    Ok(())
}
