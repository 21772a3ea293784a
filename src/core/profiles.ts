/**
 * Profiles: what a known product's install looks like, so the operator names the product
 * instead of its StatefulSets.
 */

/** Known profiles. */
export const ProfileName = { ItrsAnalytics: 'itrs-analytics' } as const;
export type ProfileName = (typeof ProfileName)[keyof typeof ProfileName];

/** One database of a profile. */
export interface ProfileDatabase {
  statefulSet: string;
  container: string;
}

/** A custom resource whose status says the product is back. */
export interface PlatformResource {
  group: string;
  version: string;
  plural: string;
  name: string;
  /** Dot path of the status field, e.g. `status.status`. */
  statusPath: string;
  /** Value meaning ready. */
  ready: string;
}

/** How the verification reaches a profile's databases. */
export interface ProfileConnection {
  /** The database user psql and pg_amcheck connect as. */
  user: string;
  database: string;
}

/** The connection when neither the input nor a profile names one: PostgreSQL's own defaults. */
export const DefaultConnection: ProfileConnection = { user: 'postgres', database: 'postgres' };

/** What a profile names. */
export interface Profile {
  databases: ProfileDatabase[];
  platform?: PlatformResource;
  connection?: ProfileConnection;
}

/** ITRS Analytics installed with Helm: PostgreSQL (`pgplatform`) and TimescaleDB (`timescale`). */
export const ItrsAnalyticsProfile: Profile = {
  databases: [
    { statefulSet: 'pgplatform', container: 'postgres' },
    { statefulSet: 'timescale', container: 'timescale' },
  ],
  platform: {
    group: 'iax.itrsgroup.com',
    version: 'v1',
    plural: 'iaxplatforms',
    name: 'iax-iax-platform',
    statusPath: 'status.status',
    ready: 'DEPLOYED',
  },
  // The charts' superuser over the Unix socket, as the seed's `psql -U postgres -c 'SELECT 1'`.
  connection: { user: 'postgres', database: 'postgres' },
};

/** The profile of a name. */
export function profileOf(name: ProfileName): Profile {
  switch (name) {
    case ProfileName.ItrsAnalytics:
      return ItrsAnalyticsProfile;
  }
}
