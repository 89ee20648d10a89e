-- s3seg: initial schema (profiles, projects, segmentation results, usage logs, credits).
--
-- Applies on a Supabase project, which already provides the `auth` schema (auth.users, auth.uid(),
-- auth.jwt()), the roles anon / authenticated / service_role and gen_random_uuid() (core since
-- PostgreSQL 13); nothing of those is created here. Needs PostgreSQL 15 or newer (ON DELETE SET NULL
-- with a column list).
--
-- Access model
--   * anon: no privileges on these tables at all (and no policy would let it see a row).
--   * authenticated: row-level security, owners only ((select auth.uid()) = user_id / = id):
--       users_profile         select + update own row, only display_name and avatar_url (column
--                             privileges: tier and credits cannot be changed by the user);
--       projects              select / insert / update / delete own rows;
--       segmentation_results  select / insert / update / delete own rows; a project_id must be one of
--                             the user's own projects (policy, and a composite foreign key that also
--                             binds service_role);
--       usage_logs            select own rows only.
--   * service_role (the backend; BYPASSRLS on Supabase): everything, plus public.consume_credits.
--
-- public.consume_credits(p_user_id uuid, p_amount integer, p_action text, p_metadata jsonb default '{}')
-- returns integer (the credits left). Error contract (SQLSTATE / message):
--   PT402 / INSUFFICIENT_CREDITS   the user has fewer than p_amount credits (nothing is deducted or
--                                  logged); PostgREST answers HTTP 402.
--   PT404 / USER_NOT_FOUND         no users_profile row for p_user_id; PostgREST answers HTTP 404.
--   22023 / INVALID_AMOUNT         p_amount is null or <= 0 (invalid_parameter_value; HTTP 400).
--   22023 / INVALID_ACTION         p_action is not 'segmentation' or 'upload' (HTTP 400).
-- The DETAIL of each error says more (e.g. "user … has 3 credits, 5 required").


-- ---------------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------------

create table public.users_profile (
    id uuid primary key references auth.users (id) on delete cascade,
    display_name text,
    avatar_url text,
    tier text not null default 'free'
        constraint users_profile_tier_check check (tier in ('free', 'pro', 'enterprise')),
    credits integer not null default 100
        constraint users_profile_credits_check check (credits >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
comment on table public.users_profile is
    'One row per auth.users row, created by the on_auth_user_created trigger. Users may change only display_name and avatar_url.';

create table public.projects (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references public.users_profile (id) on delete cascade,
    name text not null,
    description text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint projects_user_id_name_key unique (user_id, name),
    -- Target of segmentation_results' composite foreign key (a result's project has the same owner).
    constraint projects_id_user_id_key unique (id, user_id)
);

create table public.segmentation_results (
    id uuid primary key default gen_random_uuid(),
    project_id uuid,
    user_id uuid not null references public.users_profile (id) on delete cascade,
    source_image_url text,
    mask_image_url text,
    overlay_image_url text,
    text_prompt text,
    labels jsonb not null default '[]'::jsonb,
    metadata jsonb not null default '{}'::jsonb,
    status text not null default 'pending',
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint segmentation_results_status_check
        check (status in ('pending', 'processing', 'done', 'error')),
    -- An error message exactly when the status is 'error'.
    constraint segmentation_results_error_check check ((status = 'error') = (error is not null)),
    constraint segmentation_results_labels_check check (jsonb_typeof(labels) = 'array'),
    constraint segmentation_results_metadata_check check (jsonb_typeof(metadata) = 'object'),
    -- The project (if any) must belong to the same user; deleting the project keeps the result and
    -- clears only project_id.
    constraint segmentation_results_project_fkey foreign key (project_id, user_id)
        references public.projects (id, user_id) on delete set null (project_id)
);

create index segmentation_results_user_id_created_at_idx
    on public.segmentation_results (user_id, created_at desc);
create index segmentation_results_project_id_idx
    on public.segmentation_results (project_id);
create index segmentation_results_active_status_idx
    on public.segmentation_results (status) where status in ('pending', 'processing');

create table public.usage_logs (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references public.users_profile (id) on delete cascade,
    action text not null
        constraint usage_logs_action_check check (action in ('segmentation', 'upload')),
    credits_used integer not null
        constraint usage_logs_credits_used_check check (credits_used >= 0),
    metadata jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now()
);

create index usage_logs_user_id_created_at_idx on public.usage_logs (user_id, created_at desc);


-- ---------------------------------------------------------------------------------------------------
-- updated_at
-- ---------------------------------------------------------------------------------------------------

create or replace function public.set_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create trigger set_updated_at before update on public.users_profile
    for each row execute function public.set_updated_at();
create trigger set_updated_at before update on public.projects
    for each row execute function public.set_updated_at();
create trigger set_updated_at before update on public.segmentation_results
    for each row execute function public.set_updated_at();


-- ---------------------------------------------------------------------------------------------------
-- Profile for every new auth user
-- ---------------------------------------------------------------------------------------------------

-- Runs as its owner (the migration role) when Supabase Auth inserts into auth.users; the empty
-- search_path and fully qualified names are Supabase's recommended pattern for such functions.
-- The tier comes from raw_app_meta_data, which only the service role / auth admin API can set: the
-- user-controlled raw_user_meta_data (whatever a client passes to signUp) would let anyone sign up as
-- 'pro'. Display name and avatar come from the user's own metadata.
create or replace function public.handle_new_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    v_meta jsonb := coalesce(new.raw_user_meta_data, '{}'::jsonb);
    v_tier text := coalesce(new.raw_app_meta_data, '{}'::jsonb) ->> 'tier';
begin
    insert into public.users_profile (id, display_name, avatar_url, tier)
    values (
        new.id,
        coalesce(v_meta ->> 'display_name', v_meta ->> 'name'),
        v_meta ->> 'avatar_url',
        case when v_tier in ('free', 'pro', 'enterprise') then v_tier else 'free' end
    );
    return new;
end;
$$;

revoke all on function public.handle_new_user() from public, anon, authenticated;

create trigger on_auth_user_created after insert on auth.users
    for each row execute function public.handle_new_user();


-- ---------------------------------------------------------------------------------------------------
-- Credits
-- ---------------------------------------------------------------------------------------------------

create or replace function public.consume_credits(
    p_user_id uuid,
    p_amount integer,
    p_action text,
    p_metadata jsonb default '{}'::jsonb
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
    v_remaining integer;
    v_have integer;
begin
    if p_amount is null or p_amount <= 0 then
        raise exception 'INVALID_AMOUNT'
            using errcode = '22023', detail = format('p_amount must be > 0, got %s', coalesce(p_amount::text, 'null'));
    end if;
    if p_action is null or p_action not in ('segmentation', 'upload') then
        raise exception 'INVALID_ACTION'
            using errcode = '22023',
                  detail = format('p_action must be segmentation or upload, got %s', coalesce(p_action, 'null'));
    end if;

    -- Check and deduct in one statement: concurrent callers queue on the row lock and re-check
    -- credits >= p_amount against the updated row, so the balance never goes below zero.
    update public.users_profile
       set credits = credits - p_amount
     where id = p_user_id
       and credits >= p_amount
    returning credits into v_remaining;

    if not found then
        select credits into v_have from public.users_profile where id = p_user_id;
        if not found then
            raise exception 'USER_NOT_FOUND'
                using errcode = 'PT404', detail = format('no profile for user %s', p_user_id);
        end if;
        raise exception 'INSUFFICIENT_CREDITS'
            using errcode = 'PT402',
                  detail = format('user %s has %s credits, %s required', p_user_id, v_have, p_amount);
    end if;

    insert into public.usage_logs (user_id, action, credits_used, metadata)
    values (p_user_id, p_action, p_amount, coalesce(p_metadata, '{}'::jsonb));

    return v_remaining;
end;
$$;

comment on function public.consume_credits(uuid, integer, text, jsonb) is
    'Atomically deducts p_amount (> 0) credits and logs the usage; returns the credits left. Errors: '
    'PT402 INSUFFICIENT_CREDITS, PT404 USER_NOT_FOUND, 22023 INVALID_AMOUNT / INVALID_ACTION. service_role only.';

revoke all on function public.consume_credits(uuid, integer, text, jsonb) from public, anon, authenticated;
grant execute on function public.consume_credits(uuid, integer, text, jsonb) to service_role;


-- ---------------------------------------------------------------------------------------------------
-- Privileges (Supabase's default privileges grant everything to anon and authenticated; narrow them)
-- ---------------------------------------------------------------------------------------------------

revoke all on table public.users_profile, public.projects, public.segmentation_results, public.usage_logs
    from anon, authenticated;
grant all on table public.users_profile, public.projects, public.segmentation_results, public.usage_logs
    to service_role;

grant select on table public.users_profile to authenticated;
grant update (display_name, avatar_url) on table public.users_profile to authenticated;
grant select, insert, update, delete on table public.projects, public.segmentation_results to authenticated;
grant select on table public.usage_logs to authenticated;


-- ---------------------------------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------------------------------

alter table public.users_profile enable row level security;
alter table public.projects enable row level security;
alter table public.segmentation_results enable row level security;
alter table public.usage_logs enable row level security;

create policy "Users can view their own profile" on public.users_profile
    for select to authenticated
    using ((select auth.uid()) = id);
create policy "Users can update their own profile" on public.users_profile
    for update to authenticated
    using ((select auth.uid()) = id)
    with check ((select auth.uid()) = id);

create policy "Users can view their own projects" on public.projects
    for select to authenticated
    using ((select auth.uid()) = user_id);
create policy "Users can create their own projects" on public.projects
    for insert to authenticated
    with check ((select auth.uid()) = user_id);
create policy "Users can update their own projects" on public.projects
    for update to authenticated
    using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy "Users can delete their own projects" on public.projects
    for delete to authenticated
    using ((select auth.uid()) = user_id);

create policy "Users can view their own results" on public.segmentation_results
    for select to authenticated
    using ((select auth.uid()) = user_id);
create policy "Users can create their own results" on public.segmentation_results
    for insert to authenticated
    with check (
        (select auth.uid()) = user_id
        and (
            project_id is null
            or exists (
                select 1 from public.projects p
                where p.id = project_id and p.user_id = (select auth.uid())
            )
        )
    );
create policy "Users can update their own results" on public.segmentation_results
    for update to authenticated
    using ((select auth.uid()) = user_id)
    with check (
        (select auth.uid()) = user_id
        and (
            project_id is null
            or exists (
                select 1 from public.projects p
                where p.id = project_id and p.user_id = (select auth.uid())
            )
        )
    );
create policy "Users can delete their own results" on public.segmentation_results
    for delete to authenticated
    using ((select auth.uid()) = user_id);

create policy "Users can view their own usage" on public.usage_logs
    for select to authenticated
    using ((select auth.uid()) = user_id);
